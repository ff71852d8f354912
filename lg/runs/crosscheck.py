"""The state checked against its audit log: what the tables say happened must be on record.

The hash chain alone cannot see records deleted together with its head: an empty log and no `audit.head` is
what a new state directory looks like. But every change of state is recorded in the transaction that makes it
(lg.runs.store), so the tables themselves say which records must exist: each run its `run.created`, a finished
run the record that finished it with that outcome, each gate its `gate.opened` and the record that closed it,
each decision its `gate.decision`. And a run on record must still be in the tables. Found on issue #20 item 6:
deleting every record and the head while runs remained passed `lg audit verify`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from lg.runs.audit import AuditRecord, Problem
from lg.runs.database import Connection
from lg.runs.states import FINISHED_RUNS, GateStatus, RunStatus


@dataclass
class _OnRecord:
    """What the audit log says about one run."""

    created: bool = False
    ended: list[str] = field(default_factory=list)  # run.finished statuses and "cancelled", in order
    gates_opened: set[str] = field(default_factory=set)
    gates_closed: set[tuple[str, str]] = field(default_factory=set)  # (gate, status)
    decisions: set[tuple[str, str, str]] = field(default_factory=set)  # (gate, digest, approver)


def _index(records: Iterable[AuditRecord]) -> dict[str, _OnRecord]:
    runs: dict[str, _OnRecord] = defaultdict(_OnRecord)
    for record in records:
        if record.run_id is None:
            continue
        seen, data = runs[record.run_id], record.data
        if record.kind == "run.created":
            seen.created = True
        elif record.kind == "run.finished":
            seen.ended.append(str(data.get("status")))
        elif record.kind == "run.cancelled":
            seen.ended.append(RunStatus.CANCELLED.value)
        elif record.kind == "gate.opened":
            seen.gates_opened.add(str(data.get("gate")))
        elif record.kind == "gate.decision":
            seen.decisions.add((str(data.get("gate")), str(data.get("digest")), str(data.get("approver"))))
        elif record.kind.startswith("gate."):
            seen.gates_closed.add((str(data.get("gate")), record.kind.removeprefix("gate.")))
    return runs


def check(db: Connection, records: Iterable[AuditRecord]) -> list[Problem]:
    """Every run, gate and decision in the tables without the records that made it, and every run on record
    that is gone from the tables."""
    on_record = _index(records)
    problems: list[Problem] = []
    stored = set()
    for run_id, status in db.execute("SELECT id, status FROM runs ORDER BY id").fetchall():
        stored.add(run_id)
        problems.extend(_check_run(run_id, status, on_record.get(run_id, _OnRecord())))
    for run_id, gate_id, status in db.execute("SELECT run_id, gate_id, status FROM gates ORDER BY run_id, gate_id"):
        problems.extend(_check_gate(run_id, gate_id, status, on_record.get(run_id, _OnRecord())))
    for run_id, gate_id, digest, approver in db.execute(
            "SELECT run_id, gate_id, digest, approver FROM decisions ORDER BY run_id, gate_id, ts"):
        if (gate_id, digest, approver) not in on_record.get(run_id, _OnRecord()).decisions:
            problems.append(Problem(None, f"the decision of {approver} on gate {gate_id} of run {run_id} has no "
                                          "gate.decision record: audit records were deleted or the decision added"))
    for run_id, seen in sorted(on_record.items()):
        if seen.created and run_id not in stored:
            problems.append(Problem(None, f"run {run_id} is on record (run.created) but not in the database: it "
                                          "was deleted"))
    return problems


def _check_run(run_id: str, status: str, seen: _OnRecord) -> list[Problem]:
    if not seen.created:
        return [Problem(None, f"run {run_id} has no run.created record: its audit records were deleted, or the run "
                              "was added behind lg's back")]
    if status in FINISHED_RUNS and (not seen.ended or seen.ended[-1] != status):
        said = f"its last record says {seen.ended[-1]}" if seen.ended else "no record says it ended"
        return [Problem(None, f"run {run_id} is {status} but {said}: audit records were deleted or the run "
                              "was edited")]
    return []


def _check_gate(run_id: str, gate_id: str, status: str, seen: _OnRecord) -> list[Problem]:
    if gate_id not in seen.gates_opened:
        return [Problem(None, f"gate {gate_id} of run {run_id} has no gate.opened record: audit records were "
                              "deleted, or the gate was added behind lg's back")]
    if status != GateStatus.OPEN and (gate_id, status) not in seen.gates_closed:
        return [Problem(None, f"gate {gate_id} of run {run_id} is {status} but no gate.{status} record says so: "
                              "audit records were deleted or the gate was edited")]
    return []
