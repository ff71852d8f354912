"""`lg review --server URL`: the reviewer's gates read from and decided through `lg serve` (lg.client.gates).

The same three calls as the local source. Signing happens here, on the reviewer's machine, exactly as
`lg approve --key` does; the server verifies the signature and records the token's (or the signer's) name.
A gate decided by someone else between the poll and the key press comes back as the server's 409, raised as
lg.client.gates.DecidedElsewhere ("decided elsewhere: ..."); the reviewer then shows the gate as it now stands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lg.approvals.decide import sign_shown_gate
from lg.client.gates import RemoteGates, approvals_so_far
from lg.client.runs import RemoteRuns
from lg.review.source import GateDetail, GateRow
from lg.runs.gates import Verdict
from lg.runs.states import GateStatus


class HttpGateSource:
    """Gates of one `lg serve`, with one token."""

    def __init__(self, gates: RemoteGates) -> None:
        self._gates = gates

    @property
    def where(self) -> str:
        return self._gates.where

    def pending(self, run_id: str | None = None) -> list[GateRow]:
        if run_id is not None:
            rows = [row for row in self._gates.run_gates(run_id) if row["status"] == GateStatus.OPEN]  # 404: exit 2
        else:
            rows = self._gates.pending()
        return [self._open_row(row) for row in rows]

    def _open_row(self, row: dict[str, Any]) -> GateRow:
        """A row of the list, which carries no decisions. An open gate that needs one approval has none yet on
        its digest (one would have closed it); only a gate that needs more is read in full for its count, so a
        poll of many gates stays one request."""
        if int(row["count"]) <= 1:
            return _row({**row, "decisions": []})
        return _row(self._gates.gate(row["run"], row["gate"]))

    def gate(self, run_id: str, gate_id: str) -> GateDetail:
        detail = self._gates.gate(run_id, gate_id)
        return GateDetail(_row(detail), detail["card"], _decision_lines(detail))

    def decide(self, run_id: str, gate_id: str, verdict: Verdict, comment: str | None, *, digest: str,
               key: Path | None = None) -> GateDetail:
        # The whole digest the reviewer was shown is what is signed and what the decision is bound to.
        signed = sign_shown_gate(run_id, gate_id, digest, verdict, comment, key).to_json() if key else None
        settled = self._gates.decide(run_id, gate_id, verdict, digest, comment, signed)
        note = None
        if settled["status"] != GateStatus.OPEN and RemoteRuns(self._gates.client).nobody_waits(run_id):
            note = f"no lg process is waiting on run {run_id}; continue it with: lg resume {run_id}"
        return GateDetail(_row(settled), settled["card"], _decision_lines(settled), note=note)


def _row(detail: dict[str, Any]) -> GateRow:
    return GateRow(
        run_id=detail["run"], gate_id=detail["gate"], step_id=detail["step"], kind=detail["kind"],
        level=str(detail.get("level") or "green"), status=detail["status"], digest=detail["digest"],
        created=float(detail["created"]), approvals=approvals_so_far(detail), needed=int(detail["count"]),
        pipeline=str(detail.get("pipeline") or ""), outcome=detail.get("outcome"),
        require_signature=bool(detail.get("require_signature")))


def _decision_lines(detail: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f"{d['verdict']} by {d['approver']} ({'signed' if d['signed'] else 'unsigned'})"
                 + (f": {d['comment']}" if d.get("comment") else "") for d in detail.get("decisions", []))
