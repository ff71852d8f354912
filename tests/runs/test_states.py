"""The transition tables, the sets derived from them, and the rule that status strings live in states.py alone."""

from __future__ import annotations

import ast
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from lg.errors import ExitCode, InternalError, LgError
from lg.runs import states
from lg.runs.states import GATES, RUNS, STEPS, GateStatus, IllegalTransition, Machine, RunStatus, StepStatus
from lg.runs.store import RunStore
from tests.stores import StoreBackend, state_env

MACHINES: dict[str, Machine[Any]] = {"run": RUNS, "step": STEPS, "gate": GATES}
LEGAL = [(name, current, wanted) for name, machine in MACHINES.items()
         for current, onward in machine.table.items() for wanted in sorted(onward)]


@pytest.mark.parametrize(("name", "machine", "statuses"), [
    ("run", RUNS, RunStatus), ("step", STEPS, StepStatus), ("gate", GATES, GateStatus)])
def test_every_status_has_a_row_and_leads_only_to_statuses_of_its_machine(
        name: str, machine: Machine[Any], statuses: type[StrEnum]) -> None:
    assert set(machine.table) == set(statuses), name
    assert all(isinstance(wanted, statuses) for onward in machine.table.values() for wanted in onward)


@pytest.mark.parametrize(("name", "current", "wanted"), LEGAL, ids=[f"{n}:{c}->{w}" for n, c, w in LEGAL])
def test_every_legal_transition_is_accepted(name: str, current: Any, wanted: Any) -> None:
    machine = MACHINES[name]
    assert machine.allows(current, wanted)
    machine.check(f"{name} x", current, wanted)


@pytest.mark.parametrize(("machine", "current", "wanted"), [
    (RUNS, RunStatus.SUCCEEDED, RunStatus.RUNNING),  # a finished run is never resumed
    (RUNS, RunStatus.CANCELLED, RunStatus.FAILED),  # nor finished a second time
    (RUNS, RunStatus.PENDING, RunStatus.SUCCEEDED),  # a run starts before it ends
    (RUNS, RunStatus.AWAITING_APPROVAL, RunStatus.SUCCEEDED),  # it goes on after the gate first
    (RUNS, RunStatus.INTERRUPTED, RunStatus.FAILED),  # an interrupted run is resumed or cancelled
    (STEPS, StepStatus.PENDING, StepStatus.SUCCEEDED),  # success is always applied first
    (STEPS, StepStatus.RUNNING, StepStatus.SUCCEEDED),
    (STEPS, StepStatus.PENDING, StepStatus.HELD),  # effects are held only after the step ran
    (STEPS, StepStatus.HELD, StepStatus.RUNNING),  # held effects are settled, never run again
    (STEPS, StepStatus.APPLYING, StepStatus.REJECTED),  # approved effects are not rejected half-way
    (STEPS, StepStatus.SKIPPED, StepStatus.RUNNING),  # an ended step stays as it ended
    (STEPS, StepStatus.CANCELLED, StepStatus.RUNNING),
    (STEPS, StepStatus.INTERRUPTED, StepStatus.REJECTED),  # it runs again before it meets a gate
    (GATES, GateStatus.APPROVED, GateStatus.REJECTED),  # decided once per subject
    (GATES, GateStatus.EXPIRED, GateStatus.APPROVED),
    (GATES, GateStatus.CANCELLED, GateStatus.OPEN),  # a cancelled run's gates never open again
])
def test_illegal_transitions_are_refused_naming_the_object_and_both_states(
        machine: Machine[Any], current: StrEnum, wanted: StrEnum) -> None:
    assert not machine.allows(current, wanted)
    with pytest.raises(IllegalTransition) as refused:
        machine.check("step deploy of run 20261124-191530-9f2c", current, wanted)
    assert str(refused.value) == (f"step deploy of run 20261124-191530-9f2c: illegal transition from {current.value} "
                                  f"to {wanted.value}")


def test_the_derived_sets() -> None:
    assert set(states.FINISHED_RUNS) == {"succeeded", "failed", "rejected", "expired", "cancelled"}
    assert set(states.ENDED_STEPS) == {"succeeded", "failed", "skipped", "timed_out", "rejected", "expired",
                                       "cancelled"}
    assert GATES.final == {GateStatus.CANCELLED}  # the others open again on a new subject
    assert states.EXECUTING_RUNS.isdisjoint(states.FINISHED_RUNS)
    for derived in (states.PASSED_STEPS, states.FAILED_STEPS, states.STOPPED_AT_GATE):
        assert derived <= states.ENDED_STEPS
    assert states.WAITING_STEPS.isdisjoint(states.ENDED_STEPS) and states.RAN_STEPS.isdisjoint(states.ENDED_STEPS)


def test_an_illegal_transition_is_a_bug_in_lg_exit_70_and_changes_nothing(tmp_path: Path, lg: Callable[..., Any],
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          store_backend: StoreBackend) -> None:
    assert issubclass(IllegalTransition, InternalError) and not issubclass(IllegalTransition, LgError)
    assert IllegalTransition.exit_code == ExitCode.INTERNAL
    store = store_backend.open(tmp_path / "state")
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("a", "A")])
    before = list(store.audit_log.records())
    with pytest.raises(IllegalTransition, match=f"step a of run {run.id}: illegal transition from pending to "
                                                "succeeded"):
        store.applied(run.id, "a", ())
    with pytest.raises(IllegalTransition, match="from pending to awaiting_approval"):
        store.pause(run.id, "a.before", waiting=False)
    assert (store.run(run.id).status, store.step(run.id, "a").status) == ("pending", "pending")
    assert list(store.audit_log.records()) == before and store.audit_log.verify() == []
    # Through the CLI: the generic bug report, exit 70 (a user cannot cause it, so it is no LgError message).
    state_env(monkeypatch, store)

    def broken(self: RunStore, run_id: str, reason: str) -> None:
        raise IllegalTransition(f"run {run_id}", RunStatus.SUCCEEDED, RunStatus.CANCELLED)

    monkeypatch.setattr(RunStore, "cancel", broken)
    result = lg("cancel", run.id)
    assert result.code == 70 and "internal error" in result.err


# --- status strings live in states.py alone -------------------------------------------------------------------

LG = Path(__file__).resolve().parents[2] / "lg"
STATUS_TEXTS = {status.value for statuses in (RunStatus, StepStatus, GateStatus) for status in statuses}
# The same words with another meaning, which lg cannot rename. Every entry must still be needed.
ALLOWED = {
    ("cli/main.py", "pending"): "the name of the `lg pending` command",
    ("cli/policy.py", "failed"): "a key of `lg policy test --json` output: the golden cases that failed",
    ("guest/protocol.py", "failed"): "an error code of the guest agent's wire protocol, built into guest images",
    ("guest/execute.py", "timed_out"): "a field of the guest agent's exec answer (wire protocol)",
    ("vm/agent_client.py", "failed"): "the guest agent's error code, read on the host side",
    ("vm/agent_client.py", "timed_out"): "the guest agent's exec answer field, read on the host side",
    ("vm/qemu_snapshot.py", "failed"): "a status of QEMU's migration (QMP query-migrate)",
    ("vm/qemu_snapshot.py", "cancelled"): "a status of QEMU's migration (QMP query-migrate)",
    ("policy/inline.py", "open"): "Python's open() in inline code the policy reads (`python -c`)",
    ("config/templates.py", "cancelled"): "the status function cancelled() an if: may call (as in GitHub Actions)",
    ("render/junit.py", "skipped"): "the JUnit format's <skipped> element and skipped= count attribute",
    ("client/remote_store.py", "applying"): "the name of RunStore.applying as a runner call (POST /runner/calls)",
    ("server/runner_calls.py", "applying"): "the name of RunStore.applying as a runner call (POST /runner/calls)",
}


def status_literals() -> list[tuple[str, int, str]]:
    """Every string constant in lg/ that is a status, or quotes one the way SQL would ('open')."""
    found = []
    for path in sorted(LG.rglob("*.py")):
        relative = path.relative_to(LG).as_posix()
        if relative == "runs/states.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [(relative, node.lineno, text) for text in STATUS_TEXTS
                          if node.value == text or f"'{text}'" in node.value]
    return found


def test_status_strings_appear_in_states_py_only() -> None:
    found = status_literals()
    stray = [f"lg/{path}:{line}: {text!r}" for path, line, text in found if (path, text) not in ALLOWED]
    assert stray == [], "use lg.runs.states (enums, bound SQL parameters) instead of:\n" + "\n".join(stray)
    stale = set(ALLOWED) - {(path, text) for path, _, text in found}
    assert not stale, f"allow-list entries no longer needed: {sorted(stale)}"
