"""Random sequences of store operations against a real SQLite store: the store makes exactly the moves its tables
allow, refuses every other one without changing anything, and keeps its audit log intact.

Each rule predicts from the state it reads whether the operation is legal, then checks the store agrees: a legal
one succeeds and appends exactly the audit records it should; an illegal one raises (IllegalTransition, or the
InvalidInput a user gets for a finished run or a closed gate) and leaves every table and the audit log as they
were. After every rule, every status read back is a value of its enum, every change of status since the last
rule is in the table, each gate changed status at most once per subject, and the audit log verifies.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lg.approvals.decide import decide
from lg.errors import InvalidInput
from lg.model import FileChange
from lg.runner.step_vm import AttemptResult
from lg.runs.gates import GateKind, GateRules, GateStore, Verdict, gate_id_for, subject_digest
from lg.runs.states import (
    FAILED_STEPS,
    FINISHED_RUNS,
    GATES,
    RUNS,
    STEPS,
    WAITING_STEPS,
    AnyStatus,
    GateStatus,
    IllegalTransition,
    Machine,
    RunStatus,
    StepStatus,
)
from tests.stores import StoreBackend, emptied, rows_of

STEP_IDS = ("a", "b", "c", "d")
RUN_ENDINGS = {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.REJECTED, RunStatus.EXPIRED, RunStatus.INTERRUPTED}
STEP_ENDINGS = {StepStatus.FAILED, StepStatus.REJECTED, StepStatus.EXPIRED, StepStatus.INTERRUPTED}
TIMEOUT = 60.0
SCRATCH = "/dev/shm" if Path("/dev/shm").is_dir() else None

steps = st.sampled_from(STEP_IDS)
kinds: st.SearchStrategy[GateKind] = st.sampled_from(["before", "effects"])


def mostly(enum: type[AnyStatus], likely: frozenset[AnyStatus] | set[AnyStatus]) -> st.SearchStrategy[AnyStatus]:
    """Any status, but half the time one the operation makes, so that runs get far before they end."""
    return st.one_of(st.sampled_from(sorted(likely)), st.sampled_from(enum))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class StoreMachine(RuleBasedStateMachine):
    runs = Bundle("runs")

    backend: StoreBackend = StoreBackend("sqlite")  # set by the test that runs the machine
    shared = Path()  # on PostgreSQL, the state directory of every example (the key of its one database)

    def __init__(self) -> None:
        super().__init__()
        # In memory where the host has it: thousands of commits, each an fsync on a disk
        self.directory = Path(tempfile.mkdtemp(prefix="lg-store-machine-", dir=SCRATCH))
        # PostgreSQL: one database for every example, emptied for each
        self.store = emptied(self.backend.open(self.shared if self.backend.cluster is not None else self.directory))
        self.clock = Clock()
        self.gates = GateStore(self.store, self.clock)
        self.seen = self.statuses()
        self.decided_since_opened: Counter[tuple[str, ...]] = Counter()  # status changes of each gate

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- reading what the store holds --------------------------------------------------------------------

    def statuses(self) -> dict[tuple[str, ...], tuple[Any, str]]:
        """Every run, step and gate, with its status as its enum (a value outside it fails here) and, for gates,
        the digest of the subject it is on."""
        db = self.store.connection
        found: dict[tuple[str, ...], tuple[Any, str]] = {}
        for run_id, status in db.execute("SELECT id, status FROM runs"):
            found["run", run_id] = (RunStatus(status), "")
        for run_id, step_id, status in db.execute("SELECT run_id, step_id, status FROM steps"):
            found["step", run_id, step_id] = (StepStatus(status), "")
        for run_id, gate_id, status, digest in db.execute("SELECT run_id, gate_id, status, digest FROM gates"):
            found["gate", run_id, gate_id] = (GateStatus(status), digest)
        return found

    def everything(self) -> list[list[tuple[Any, ...]]]:
        return [rows_of(self.store, table) for table in ("runs", "steps", "gates", "decisions", "audit")]

    def run_status(self, run_id: str) -> RunStatus:
        return self.store.run(run_id).status

    def step_status(self, run_id: str, step_id: str) -> StepStatus:
        return self.store.step(run_id, step_id).status

    # --- trying an operation -----------------------------------------------------------------------------

    def attempt(self, legal: bool, action: Callable[[], object], records: list[str],
                refusal: type[Exception] = IllegalTransition) -> None:
        before = self.everything()
        if not legal:
            with pytest.raises(refusal):
                action()
            assert self.everything() == before, "a refused operation changed something"
            return
        action()
        appended = [row[2] for row in self.everything()[-1][len(before[-1]):]]
        assert appended == records
        self.every_change_is_in_its_table()

    def move_run(self, run_id: str, wanted: RunStatus, action: Callable[[], object], records: list[str],
                 allowed: Callable[[RunStatus], bool] = lambda current: True) -> None:
        current = self.run_status(run_id)
        self.attempt(allowed(current) and RUNS.allows(current, wanted), action, records)

    def move_step(self, run_id: str, step_id: str, wanted: StepStatus, action: Callable[[], object],
                  records: list[str], made: bool = True) -> None:
        current = self.step_status(run_id, step_id)
        self.attempt(made and STEPS.allows(current, wanted), action, records)

    # --- runs --------------------------------------------------------------------------------------------

    def new_run(self) -> str:
        run = self.store.create_run("demo", self.directory / "p.yaml", self.directory, "alice",
                                    [(step_id, step_id.upper()) for step_id in STEP_IDS])
        return run.id

    @initialize(target=runs)
    def first_run(self) -> str:
        return self.new_run()

    @precondition(lambda self: len(self.store.runs(5)) < 4)  # a few runs: more moves on each
    @rule(target=runs)
    def create_run(self) -> str:
        return self.new_run()

    @rule(run_id=runs)
    def start_run(self, run_id: str) -> None:
        self.move_run(run_id, RunStatus.RUNNING, lambda: self.store.start_run(run_id), [],
                      lambda current: current is RunStatus.PENDING)

    @rule(run_id=runs)
    def claim(self, run_id: str) -> None:
        finished = self.run_status(run_id) in FINISHED_RUNS
        self.attempt(not finished, lambda: self.store.claim(run_id, "bob"), ["run.resumed"], InvalidInput)

    @rule(run_id=runs, waiting=st.booleans())
    def pause(self, run_id: str, waiting: bool) -> None:
        before = self.store.run(run_id)
        self.move_run(run_id, RunStatus.AWAITING_APPROVAL, lambda: self.store.pause(run_id, "a.before",
                                                                                    waiting=waiting), ["run.paused"])
        if RUNS.allows(before.status, RunStatus.AWAITING_APPROVAL):  # it paused: a process waits there, or none
            assert self.store.run(run_id).pid == (before.pid if waiting else None)

    @rule(run_id=runs)
    def continue_run(self, run_id: str) -> None:
        self.move_run(run_id, RunStatus.RUNNING,
                      lambda: self.store.continue_run(run_id, "a.before", GateStatus.APPROVED, 0.1),
                      ["run.continued"], lambda current: current is RunStatus.AWAITING_APPROVAL)

    @rule(run_id=runs, status=mostly(RunStatus, RUN_ENDINGS))
    def finish_run(self, run_id: str, status: RunStatus) -> None:
        self.move_run(run_id, status, lambda: self.store.finish_run(run_id, status, 1, "why"), ["run.finished"],
                      lambda current: status in RUN_ENDINGS)

    @rule(run_id=runs)
    def cancel(self, run_id: str) -> None:
        finished = self.run_status(run_id) in FINISHED_RUNS
        open_gates = sum(1 for gate in self.gates.gates(run_id) if gate.is_open)
        self.attempt(not finished, lambda: self.store.cancel(run_id, "stop"),
                     ["run.cancelled"] + ["gate.cancelled"] * open_gates, InvalidInput)
        if not finished:
            assert all(step.status is StepStatus.CANCELLED or step.status in STEPS.final
                       for step in self.store.steps(run_id))

    # --- steps -------------------------------------------------------------------------------------------

    @rule(run_id=runs, step_id=steps)
    def start_step(self, run_id: str, step_id: str) -> None:
        self.move_step(run_id, step_id, StepStatus.RUNNING,
                       lambda: self.store.start_step(run_id, step_id, self.directory / "x.log", "ab" * 32),
                       ["step.started"])

    @rule(run_id=runs, step_id=steps, status=mostly(StepStatus, WAITING_STEPS))
    def wait_at_gate(self, run_id: str, step_id: str, status: StepStatus) -> None:
        self.move_step(run_id, step_id, status, lambda: self.store.wait_at_gate(run_id, step_id, status, "g"), [],
                       status in WAITING_STEPS)

    @rule(run_id=runs, step_id=steps)
    def skip_step(self, run_id: str, step_id: str) -> None:
        self.move_step(run_id, step_id, StepStatus.SKIPPED, lambda: self.store.skip_step(run_id, step_id, "if"),
                       ["step.skipped"])

    @rule(run_id=runs, step_id=steps, status=mostly(StepStatus, STEP_ENDINGS), audited=st.booleans())
    def end_step(self, run_id: str, step_id: str, status: StepStatus, audited: bool) -> None:
        self.move_step(run_id, step_id, status,
                       lambda: self.store.end_step(run_id, step_id, status, "why", audited=audited),
                       [f"step.{status}"] if audited else [], status in STEP_ENDINGS)

    @rule(run_id=runs, step_id=steps, status=mostly(StepStatus, FAILED_STEPS))
    def end_attempts(self, run_id: str, step_id: str, status: StepStatus) -> None:
        self.move_step(run_id, step_id, status, lambda: self.store.end_attempts(run_id, step_id, status),
                       ["step.finished"], status in FAILED_STEPS)

    @rule(run_id=runs, step_id=steps)
    def applying(self, run_id: str, step_id: str) -> None:
        self.move_step(run_id, step_id, StepStatus.APPLYING,
                       lambda: self.store.applying(run_id, step_id, {"level": "green"}), [])

    @rule(run_id=runs, step_id=steps)
    def applied(self, run_id: str, step_id: str) -> None:
        self.move_step(run_id, step_id, StepStatus.SUCCEEDED,
                       lambda: self.store.applied(run_id, step_id, (FileChange("x", "created"),)), ["effects.applied"])

    @rule(run_id=runs, step_id=steps, exit_code=st.sampled_from([0, 1, None]))
    def record_attempt(self, run_id: str, step_id: str, exit_code: int | None) -> None:
        status = StepStatus.SUCCEEDED if exit_code == 0 else StepStatus.FAILED
        self.attempt(True, lambda: self.store.record_attempt(run_id, step_id, AttemptResult(status, exit_code, "d")),
                     [])  # no status of its own: the invariant sees the step's status unchanged

    # --- walks: a legal move chosen from the table, so that runs and steps get everywhere -------------------

    @rule(run_id=runs, data=st.data())
    def walk_run(self, run_id: str, data: st.DataObject) -> None:
        for _ in range(3):  # several moves in a row: random rules alone seldom get far
            current = self.run_status(run_id)
            if not RUNS.table[current]:
                return
            wanted = data.draw(st.sampled_from(sorted(RUNS.table[current])))
            if wanted is RunStatus.RUNNING:
                {RunStatus.PENDING: self.start_run, RunStatus.AWAITING_APPROVAL: self.continue_run}.get(
                    current, self.claim)(run_id)
            elif wanted is RunStatus.AWAITING_APPROVAL:
                self.pause(run_id, data.draw(st.booleans()))
            elif wanted is RunStatus.CANCELLED:
                self.cancel(run_id)
            else:
                self.finish_run(run_id, wanted)

    @rule(run_id=runs, step_id=steps, data=st.data())
    def walk_step(self, run_id: str, step_id: str, data: st.DataObject) -> None:
        for _ in range(5):
            onward = STEPS.table[self.step_status(run_id, step_id)] - {StepStatus.CANCELLED}  # cancel: the run's
            if not onward:
                return
            self.step_to(run_id, step_id, data.draw(st.sampled_from(sorted(onward))), data)

    def step_to(self, run_id: str, step_id: str, wanted: StepStatus, data: st.DataObject) -> None:
        moves: dict[StepStatus, Callable[[], None]] = {
            StepStatus.RUNNING: lambda: self.start_step(run_id, step_id),
            StepStatus.SKIPPED: lambda: self.skip_step(run_id, step_id),
            StepStatus.APPLYING: lambda: self.applying(run_id, step_id),
            StepStatus.SUCCEEDED: lambda: self.applied(run_id, step_id),
            StepStatus.TIMED_OUT: lambda: self.end_attempts(run_id, step_id, wanted),
        }
        if wanted in WAITING_STEPS:
            self.wait_at_gate(run_id, step_id, wanted)
        elif wanted in moves:
            moves[wanted]()
        elif wanted is StepStatus.FAILED and data.draw(st.booleans()):
            self.end_attempts(run_id, step_id, wanted)
        else:
            self.end_step(run_id, step_id, wanted, data.draw(st.booleans()))

    # --- gates -------------------------------------------------------------------------------------------

    @rule(run_id=runs, step_id=steps, kind=kinds, subject=st.integers(0, 2), count=st.integers(1, 2))
    def open_gate(self, run_id: str, step_id: str, kind: GateKind, subject: int, count: int) -> None:
        content = {"run": run_id, "step": step_id, "version": subject}
        existing = self.gates.gate(run_id, gate_id_for(step_id, kind))
        if existing is not None and existing.digest == subject_digest(content):
            legal, records = True, []  # the same subject: the gate as it is, decisions and all
        else:
            legal = existing is None or GATES.allows(existing.status, GateStatus.OPEN)
            records = ["gate.opened"]
        self.attempt(legal, lambda: self.gates.open(run_id, step_id, kind, content, {"level": "orange"},
                                                    GateRules(count=count, timeout=TIMEOUT)), records)

    @rule(run_id=runs, step_id=steps, kind=kinds, approver=st.sampled_from(["ann", "ben", "cat"]),
          verdict=st.sampled_from(["approve", "reject"]))
    def decide(self, run_id: str, step_id: str, kind: GateKind, approver: str, verdict: Verdict) -> None:
        gate = self.gates.gate(run_id, gate_id_for(step_id, kind))
        if gate is None:
            return
        run = self.store.run(run_id)

        def action() -> object:
            return decide(self.gates, run, gate, verdict, None, user=approver)

        if gate.is_open and gate.expires is not None and gate.expires <= self.clock():
            with pytest.raises(InvalidInput, match="expired before this decision"):
                action()
            return  # the decision itself noticed the deadline: the gate expired, and only that (invariant)
        decisions = self.gates.decisions(gate)
        approvals = {d.approver for d in decisions if d.verdict == "approve"} | {approver}
        settles = verdict == "reject" or len(approvals) >= gate.rules.count
        closes = [f"gate.{'rejected' if verdict == 'reject' else 'approved'}"] if settles else []
        legal = gate.is_open and approver not in {d.approver for d in decisions}
        self.attempt(legal, action, ["gate.decision", *closes], InvalidInput)

    @rule(seconds=st.sampled_from([0.0, 30.0, 61.0]))
    def expire_due(self, seconds: float) -> None:
        self.clock.now += seconds
        due = [gate for run_id, in self.store.connection.execute("SELECT id FROM runs")
               for gate in self.gates.gates(run_id) if gate.is_open and (gate.expires or 0) <= self.clock()]
        self.attempt(True, self.gates.expire_due, ["gate.expired"] * len(due))

    # --- after every rule --------------------------------------------------------------------------------

    @invariant()
    def every_change_is_in_its_table(self) -> None:
        """Checked after every rule, and after each move within one (walks make several)."""
        now = self.statuses()
        machines: dict[str, Machine[Any]] = {"run": RUNS, "step": STEPS, "gate": GATES}
        for key, (status, digest) in now.items():
            if key not in self.seen:
                continue
            before, before_digest = self.seen[key]
            assert status is before or machines[key[0]].allows(before, status), f"{key}: {before} -> {status}"
            if key[0] != "gate":
                continue
            if status is GateStatus.OPEN or digest != before_digest:  # (re)opened: a new subject to decide
                self.decided_since_opened[key] = 0
            elif status is not before:
                self.decided_since_opened[key] += 1
                assert self.decided_since_opened[key] == 1, f"{key} changed status twice on one subject"
        self.seen = now

    @invariant()
    def the_audit_log_verifies(self) -> None:
        assert self.store.audit_log.verify() == []


EXAMPLES = {"sqlite": 200, "postgresql": 60}  # a PostgreSQL commit is a round trip to the server: fewer


def test_store_state_machine(store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(StoreMachine, "backend", store_backend)
    monkeypatch.setattr(StoreMachine, "shared", tmp_path)
    run_state_machine_as_test(StoreMachine, settings=settings(
        max_examples=EXAMPLES[store_backend.name], stateful_step_count=50, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow]))
