"""Every transition of every table, made through the store's own methods on a real database; every move the tables
do not have, refused by those methods with nothing changed. (test_states.py checks the tables alone;
test_store_machine.py random sequences.)"""

from __future__ import annotations

import itertools
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lg.errors import InvalidInput
from lg.model import FileChange
from lg.runs.gates import GateRules, GateStore
from lg.runs.states import (
    ENDED_STEPS,
    FINISHED_RUNS,
    GATES,
    RUNS,
    STEPS,
    AnyStatus,
    GateStatus,
    IllegalTransition,
    Machine,
    RunStatus,
    StepStatus,
)
from lg.runs.store import RunStore
from tests.stores import StoreBackend, rows_of

SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None  # hundreds of commits: in memory where we can

Move = Callable[[RunStore, str], object]
StepMove = Callable[[RunStore, str, str], object]


def run_moves(wanted: RunStatus) -> dict[str, Move]:
    """The methods that move a run to `wanted`."""
    if wanted is RunStatus.RUNNING:
        return {"start_run": lambda s, r: s.start_run(r), "claim": lambda s, r: s.claim(r, "bob"),
                "continue_run": lambda s, r: s.continue_run(r, "g.before", GateStatus.APPROVED, 0.0)}
    if wanted is RunStatus.AWAITING_APPROVAL:
        return {"pause": lambda s, r: s.pause(r, "g.before", waiting=False)}
    if wanted is RunStatus.CANCELLED:
        return {"cancel": lambda s, r: s.cancel(r, "stop")}
    if wanted is RunStatus.PENDING:
        return {}  # a run is created pending, and never goes back
    return {"finish_run": lambda s, r: s.finish_run(r, wanted, 1, "why")}


def run_move_allowed(method: str, current: RunStatus, wanted: RunStatus) -> bool:
    sources = {"start_run": {RunStatus.PENDING}, "continue_run": {RunStatus.AWAITING_APPROVAL}}
    return RUNS.allows(current, wanted) and current in sources.get(method, set(RunStatus))


def step_moves(wanted: StepStatus) -> dict[str, StepMove]:
    """The methods that move a step to `wanted` (cancelling the whole run: see test_cancel_...)."""
    ends: dict[StepStatus, dict[str, StepMove]] = {
        StepStatus.RUNNING: {"start_step": lambda s, r, t: s.start_step(r, t, Path("x.log"), "ab" * 32)},
        StepStatus.SKIPPED: {"skip_step": lambda s, r, t: s.skip_step(r, t, "skipped: if: false")},
        StepStatus.APPLYING: {"applying": lambda s, r, t: s.applying(r, t)},
        StepStatus.SUCCEEDED: {"applied": lambda s, r, t: s.applied(r, t, (FileChange("x", "created"),))},
        StepStatus.PENDING: {},
        StepStatus.CANCELLED: {"cancel_step": lambda s, r, t: s.cancel_step(r, t, "cancelled: step 'u' failed")},
    }
    if wanted in ends:
        return ends[wanted]
    if wanted in (StepStatus.AWAITING_APPROVAL, StepStatus.HELD):
        return {"wait_at_gate": lambda s, r, t: s.wait_at_gate(r, t, wanted, "t.before")}
    moves: dict[str, StepMove] = {}
    if wanted is not StepStatus.TIMED_OUT:
        moves["end_step"] = lambda s, r, t: s.end_step(r, t, wanted, "why")
        moves["end_step unaudited"] = lambda s, r, t: s.end_step(r, t, wanted, "why", audited=False)
    if wanted in (StepStatus.FAILED, StepStatus.TIMED_OUT):
        moves["end_attempts"] = lambda s, r, t: s.end_attempts(r, t, wanted)
    return moves


def path_to(machine: Machine[AnyStatus], start: AnyStatus, goal: AnyStatus,
            usable: Callable[[AnyStatus], bool]) -> list[AnyStatus]:
    """The shortest list of statuses from `start` to `goal` along edges whose target a store method makes."""
    paths: deque[list[AnyStatus]] = deque([[start]])
    seen = {start}
    while paths:
        path: list[AnyStatus] = paths.popleft()
        if path[-1] == goal:
            return path[1:]
        for onward in sorted(machine.table[path[-1]]):
            if onward not in seen and usable(onward):
                seen.add(onward)
                paths.append(path.copy())
                paths[-1].append(onward)
    raise AssertionError(f"{goal} cannot be reached from {start} through the store")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, store_backend: StoreBackend) -> Iterator[RunStore]:
    # Hundreds of runs a second: ids unique by a counter, not by time and 16 random bits
    numbers = itertools.count(1)
    monkeypatch.setattr("lg.runs.store.new_run_id", lambda: f"20261124-191530-{next(numbers):04x}")
    with tempfile.TemporaryDirectory(prefix="lg-transitions-", dir=SCRATCH) as directory:
        store = store_backend.open(Path(directory))
        yield store
        store.close()


def everything(store: RunStore) -> list[list[tuple[object, ...]]]:
    return [rows_of(store, table) for table in ("runs", "steps", "gates", "decisions", "audit")]


def new_run(store: RunStore) -> str:
    return store.create_run("demo", Path("p.yaml"), Path(), "alice", [("t", "T")]).id


def run_at(store: RunStore, status: RunStatus) -> str:
    run_id = new_run(store)
    for wanted in path_to(RUNS, RunStatus.PENDING, status, lambda onward: bool(run_moves(onward))):
        current = store.run(run_id).status
        next(move for name, move in run_moves(wanted).items() if run_move_allowed(name, current, wanted))(
            store, run_id)
    assert store.run(run_id).status is status
    return run_id


def step_at(store: RunStore, status: StepStatus) -> str:
    run_id = new_run(store)
    if status is StepStatus.CANCELLED:
        store.cancel(run_id, "stop")
        return run_id
    for wanted in path_to(STEPS, StepStatus.PENDING, status, lambda onward: bool(step_moves(onward))):
        next(iter(step_moves(wanted).values()))(store, run_id, "t")
    assert store.step(run_id, "t").status is status
    return run_id


def test_every_run_transition_is_made_by_the_store_and_every_other_refused(store: RunStore) -> None:
    made, refused = set(), 0
    for current in RunStatus:
        for wanted in RunStatus:
            for name, move in run_moves(wanted).items():
                run_id = run_at(store, current)
                before = everything(store)
                if run_move_allowed(name, current, wanted):
                    move(store, run_id)
                    assert store.run(run_id).status is wanted, (name, current, wanted)
                    made.add((current, wanted))
                    continue
                # A user asking to resume or cancel a finished run is told so; anything else is a bug in lg.
                user_facing = name in ("claim", "cancel") and current in FINISHED_RUNS
                with pytest.raises(InvalidInput if user_facing else IllegalTransition) as error:
                    move(store, run_id)
                if not user_facing:
                    assert f"run {run_id}: illegal transition from {current} to {wanted}" == str(error.value)
                assert everything(store) == before, (name, current, wanted)
                refused += 1
    assert made == {(a, b) for a, onward in RUNS.table.items() for b in onward}
    assert refused > 50


def test_every_step_transition_is_made_by_the_store_and_every_other_refused(store: RunStore) -> None:
    made, refused = set(), 0
    for current in StepStatus:
        for wanted in StepStatus:
            for name, move in step_moves(wanted).items():
                run_id = step_at(store, current)
                before = everything(store)
                if STEPS.allows(current, wanted):
                    move(store, run_id, "t")
                    assert store.step(run_id, "t").status is wanted, (name, current, wanted)
                    made.add((current, wanted))
                    continue
                with pytest.raises(IllegalTransition, match=f"^step t of run {run_id}: illegal transition from "
                                                            f"{current} to {wanted}$"):
                    move(store, run_id, "t")
                assert everything(store) == before, (name, current, wanted)
                refused += 1
    assert made == {(a, b) for a, onward in STEPS.table.items() for b in onward}
    assert refused > 100


def test_cancelling_one_step_cancels_its_open_gate_and_leaves_the_run_and_other_gates(store: RunStore) -> None:
    run_id = run_at(store, RunStatus.RUNNING)
    gates = GateStore(store, lambda: 1_800_000_000.0)
    store.wait_at_gate(run_id, "t", StepStatus.AWAITING_APPROVAL, "t.before")
    gates.open(run_id, "t", "before", {"v": 1}, {}, GateRules())
    gates.open(run_id, "u", "before", {"v": 1}, {}, GateRules())  # another step's
    store.cancel_step(run_id, "t", "cancelled: step 'u' failed (fail_fast)")
    assert store.step(run_id, "t").status is StepStatus.CANCELLED
    assert store.run(run_id).status is RunStatus.RUNNING
    assert {g.gate_id: g.status for g in gates.gates(run_id)} == {"t.before": "cancelled", "u.before": "open"}
    kinds = [r.kind for r in store.audit_log.records() if r.run_id == run_id]
    assert kinds[-2:] == ["step.cancelled", "gate.cancelled"]
    assert store.verify_audit() == []


def test_cancel_moves_every_unfinished_step_and_open_gate_and_leaves_the_rest(store: RunStore) -> None:
    for current in StepStatus:
        if current is StepStatus.CANCELLED:
            continue
        run_id = step_at(store, current)
        store.cancel(run_id, "stop")
        assert store.step(run_id, "t").status is (current if current in ENDED_STEPS else StepStatus.CANCELLED)
    run_id = step_at(store, StepStatus.HELD)
    gates = GateStore(store, lambda: 1_800_000_000.0)
    gates.open(run_id, "t", "effects", {"v": 1}, {}, GateRules())
    gates.open(run_id, "t", "before", {"v": 1}, {}, GateRules(timeout=1.0))
    GateStore(store, lambda: 1_800_000_002.0).expire_due()  # the first still open, the second expired
    store.cancel(run_id, "stop")
    assert {g.gate_id: g.status for g in gates.gates(run_id)} == {"t.effects": "cancelled", "t.before": "expired"}
    kinds = [r.kind for r in store.audit_log.records() if r.run_id == run_id]
    assert kinds[-2:] == ["run.cancelled", "gate.cancelled"]
    assert store.run(run_id).status is RunStatus.CANCELLED and store.run(run_id).error == "stop"


def test_every_gate_transition_is_made_by_the_gate_store(store: RunStore) -> None:
    clock = [1_800_000_000.0]
    gates = GateStore(store, lambda: clock[0])
    made = set()

    def opened(subject: int, timeout: float | None = None, count: int = 1) -> tuple[str, str]:
        run_id = new_run(store)
        return run_id, gates.open(run_id, "t", "effects", {"v": subject}, {}, GateRules(count=count,
                                                                                     timeout=timeout)).gate_id

    def close(run_id: str, gate_id: str, status: GateStatus) -> None:
        gate = gates.gate(run_id, gate_id)
        assert gate is not None
        if status is GateStatus.EXPIRED:
            clock[0] += 3600
            gates.expire_due()
        elif status is GateStatus.CANCELLED:
            store.cancel(run_id, "stop")
        else:
            from lg.approvals.decide import decide

            decide(gates, store.run(run_id), gate, "approve" if status is GateStatus.APPROVED else "reject", None,
                   user="bob")

    for status in GateStatus:
        if status is GateStatus.OPEN:
            run_id, gate_id = opened(1, count=2)
            gates.open(run_id, "t", "effects", {"v": 2}, {}, GateRules())  # a new subject while still open
            made.add((GateStatus.OPEN, GateStatus.OPEN))
            continue
        run_id, gate_id = opened(1, timeout=60.0)
        close(run_id, gate_id, status)
        made.add((GateStatus.OPEN, status))
        before = everything(store)
        with pytest.raises(InvalidInput, match=f"already {status}"):  # decided once per subject
            close(run_id, gate_id, GateStatus.REJECTED)
        assert gates.expire_due() == [] and everything(store) == before
        if GATES.allows(status, GateStatus.OPEN):  # the step did something else: it is asked again
            assert gates.open(run_id, "t", "effects", {"v": 2}, {}, GateRules()).status is GateStatus.OPEN
            made.add((status, GateStatus.OPEN))
        else:
            with pytest.raises(IllegalTransition, match=f"gate t.effects of run {run_id}: illegal transition "
                                                        f"from {status} to open"):
                gates.open(run_id, "t", "effects", {"v": 2}, {}, GateRules())
            assert everything(store) == before
    assert made == {(a, b) for a, onward in GATES.table.items() for b in onward}


@pytest.mark.parametrize(("method", "wanted"), [
    ("end_step", StepStatus.SKIPPED), ("end_step", StepStatus.RUNNING), ("end_attempts", StepStatus.INTERRUPTED),
    ("wait_at_gate", StepStatus.RUNNING), ("finish_run", RunStatus.CANCELLED), ("finish_run", RunStatus.RUNNING),
])
def test_a_method_makes_only_its_own_moves_even_where_the_table_has_the_move(
        store: RunStore, method: str, wanted: StepStatus | RunStatus) -> None:
    run_id = step_at(store, StepStatus.RUNNING)
    store.start_run(run_id)
    calls: dict[str, Callable[[], object]] = {
        "end_step": lambda: store.end_step(run_id, "t", wanted, "why"),  # type: ignore[arg-type]
        "end_attempts": lambda: store.end_attempts(run_id, "t", wanted),  # type: ignore[arg-type]
        "wait_at_gate": lambda: store.wait_at_gate(run_id, "t", wanted, "g"),  # type: ignore[arg-type]
        "finish_run": lambda: store.finish_run(run_id, wanted, 1, "why"),  # type: ignore[arg-type]
    }
    before = everything(store)
    with pytest.raises(IllegalTransition, match=f"from running to {wanted}"):
        calls[method]()
    assert everything(store) == before
