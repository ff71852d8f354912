"""Where `lg review` gets gates from and sends decisions to: a small interface with one implementation per
place gates live: the local state store here, an `lg serve` in lg.review.http_source (the same three calls over
HTTP); the reviewer does not change.

Every decision names the digest of the card the reviewer was shown, so a gate whose subject changed meanwhile is
refused rather than approved blind, and it goes through lg.approvals.decide like `lg approve`: checked
(eligibility, self-approval, signatures), recorded once, audited.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from lg.approvals.decide import DecisionRefused, decide, resolve_gate, sign_decision
from lg.runs.gates import Gate, GateStore, Verdict
from lg.runs.states import GateStatus
from lg.runs.store import RunStore


@dataclass(frozen=True)
class GateRow:
    """One line of the gate list."""

    run_id: str
    gate_id: str
    step_id: str
    kind: str
    level: str
    status: str
    digest: str
    created: float
    approvals: int  # distinct approvers so far, on the current digest
    needed: int
    pipeline: str
    outcome: str | None = None
    require_signature: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.run_id, self.gate_id)

    @property
    def is_open(self) -> bool:
        return self.status == GateStatus.OPEN


@dataclass(frozen=True)
class GateDetail:
    """A gate with its card: what the reviewer reads before deciding."""

    row: GateRow
    card: dict[str, Any]
    decisions: tuple[str, ...]  # one line each: "approve by carol (signed): looks fine"
    note: str | None = None  # what to do next, after a decision (e.g. resume the run)


class GateSource(Protocol):
    """The three things the reviewer needs, wherever the gates are."""

    @property
    def where(self) -> str:
        """What the reviewer shows as its source (a state directory, a server's address)."""
        ...

    def pending(self, run_id: str | None = None) -> list[GateRow]:
        """Open gates, oldest first (of one run when run_id is given)."""
        ...

    def gate(self, run_id: str, gate_id: str) -> GateDetail:
        """One gate, open or not, as it stands now."""
        ...

    def decide(self, run_id: str, gate_id: str, verdict: Verdict, comment: str | None, *, digest: str,
               key: Path | None = None) -> GateDetail:
        """Record one decision on the gate as it was shown (`digest`), signed with `key` when given."""
        ...


class LocalGateSource:
    """Gates in this machine's state store (the project's, or $LG_STATE_DIR)."""

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._gates = GateStore(store)

    @property
    def where(self) -> str:
        state_dir = self._store.state_dir.resolve()
        cwd = Path.cwd().resolve()
        return str(state_dir.relative_to(cwd)) if state_dir.is_relative_to(cwd) else str(state_dir)

    def pending(self, run_id: str | None = None) -> list[GateRow]:
        if run_id is not None:
            self._store.run(run_id)  # an unknown run is an error (exit 2), not an empty list
        gates = self._gates.open_gates()
        return [self._row(gate) for gate in gates if run_id is None or gate.run_id == run_id]

    def gate(self, run_id: str, gate_id: str) -> GateDetail:
        gate = self._gates.gate(run_id, gate_id)
        if gate is None:
            raise DecisionRefused(f"run {run_id} has no gate {gate_id!r}")
        lines = tuple(
            f"{d.verdict} by {d.approver} ({'signed' if d.signature else 'unsigned'})"
            + (f": {d.comment}" if d.comment else "") for d in self._gates.decisions(gate))
        return GateDetail(self._row(gate), gate.card, lines)

    def decide(self, run_id: str, gate_id: str, verdict: Verdict, comment: str | None, *, digest: str,
               key: Path | None = None) -> GateDetail:
        self._store.require_intact_audit()
        record = self._store.run(run_id)
        gate = resolve_gate(self._gates, record, gate_id)
        signed = sign_decision(gate, verdict, comment, key) if key is not None else None
        settled = decide(self._gates, record, gate, verdict, comment, signed=signed, expected_digest=digest)
        note = None
        if not settled.is_open and not self._store.run(run_id).process_alive:
            note = f"no lg process is waiting on run {run_id}; continue it with: lg resume {run_id}"
        return replace(self.gate(run_id, gate_id), note=note)

    def _row(self, gate: Gate) -> GateRow:
        approvals = {d.approver for d in self._gates.decisions(gate) if d.verdict == "approve"}
        return GateRow(
            run_id=gate.run_id, gate_id=gate.gate_id, step_id=gate.step_id, kind=gate.kind,
            level=str(gate.card.get("level", "green")), status=str(gate.status), digest=gate.digest,
            created=gate.created, approvals=len(approvals), needed=gate.rules.count,
            pipeline=self._pipeline(gate.run_id), outcome=gate.outcome,
            require_signature=gate.rules.require_signature)

    def _pipeline(self, run_id: str) -> str:
        return self._store.run(run_id).pipeline
