"""Gates read from and decided through `lg serve`: what `lg pending`, `show`, `approve`, `reject` and `lg review`
need, as the local commands see it.

The server's views carry a few fields more than the local `--json` output (`page`, `allow_self_approval`, each
decision's `digest`); `local_view` and `local_decision` keep the local commands' fields, in their order, so a
command prints the same JSON with or without `--server`. Signing is not done here (lg.approvals is a sibling
layer): callers sign, then hand the `signed` value in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from lg.client.http import ApiClient, ServerRefused
from lg.errors import InvalidInput
from lg.runs.states import GateStatus

Verdict = Literal["approve", "reject"]

# The fields of `lg pending --json` (lg.cli.approvals.gate_view), in its order.
GATE_FIELDS = ("run", "gate", "step", "kind", "status", "level", "digest", "created", "expires", "decided", "outcome",
               "approvers", "count", "require_signature", "pipeline", "initiator")
DECISION_FIELDS = ("approver", "verdict", "comment", "signed", "ts")
# A refusal because the gate moved on: someone else decided it, or it expired or was cancelled.
DECIDED_ELSEWHERE = frozenset({"gate_closed", "decision_refused", "run_finished"})


class DecidedElsewhere(ServerRefused):
    """The server refused a decision because the gate was closed meanwhile (exit 4, as every 409)."""


def local_view(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in GATE_FIELDS}


def local_decision(decision: dict[str, Any]) -> dict[str, Any]:
    return {name: decision.get(name) for name in DECISION_FIELDS}


def run_path(run_id: str) -> str:
    return f"/api/v1/runs/{quote(run_id, safe='')}"


def gate_path(run_id: str, gate_id: str) -> str:
    return f"{run_path(run_id)}/gates/{quote(gate_id, safe='')}"


@dataclass(frozen=True)
class RemoteGates:
    """The gates of one server, read and decided with one token."""

    client: ApiClient

    @property
    def where(self) -> str:
        return self.client.url

    def pending(self) -> list[dict[str, Any]]:
        """Open gates, oldest first, as the server lists them."""
        rows: list[dict[str, Any]] = self.client.get_json("/api/v1/gates")
        return rows

    def run_gates(self, run_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.client.get_json(f"{run_path(run_id)}/gates")
        return rows

    def gate(self, run_id: str, gate_id: str) -> dict[str, Any]:
        """One gate with its card and the decisions on its current digest."""
        detail: dict[str, Any] = self.client.get_json(gate_path(run_id, gate_id))
        return detail

    def run(self, run_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.client.get_json(run_path(run_id))
        return record

    def pick(self, run_id: str, gate_id: str | None, *, to_decide: bool) -> dict[str, Any]:
        """A named gate of the run, else its only open one (its only gate at all, to show); with its card.

        The same choices, and the same refusals, as the local commands make (lg.approvals.decide.resolve_gate).
        """
        if gate_id is not None:
            return self.gate(run_id, gate_id)
        every = self.run_gates(run_id)
        if not to_decide and len(every) == 1:
            return self.gate(run_id, every[0]["gate"])
        open_gates = [row for row in every if row["status"] == GateStatus.OPEN]
        if len(open_gates) == 1:
            return self.gate(run_id, open_gates[0]["gate"])
        if not open_gates:
            raise InvalidInput(f"run {run_id} has no open gate (its gates: {describe(every)})")
        raise InvalidInput(f"run {run_id} has several open gates; name one: {describe(open_gates)}")

    def decide(self, run_id: str, gate_id: str, verdict: Verdict, digest: str, comment: str | None,
               signed: dict[str, str] | None = None) -> dict[str, Any]:
        """Post one decision bound to `digest`; the gate as it stands afterwards (its detail).

        The identity is the token's (or the signer's, for a signed decision), never a local user name."""
        body: dict[str, Any] = {"verdict": verdict, "digest": digest}
        if comment:
            body["comment"] = comment
        if signed is not None:
            body["signed"] = signed
        try:
            settled: dict[str, Any] = self.client.post_json(f"{gate_path(run_id, gate_id)}/decisions", body)
        except ServerRefused as refused:
            if refused.code in DECIDED_ELSEWHERE:
                raise DecidedElsewhere(self.client.url, refused.status, refused.code,
                                       f"decided elsewhere: {refused.server_message}") from None
            raise
        return settled


def approvals_so_far(detail: dict[str, Any]) -> int:
    """Distinct approvers on the gate's current digest."""
    return len({d["approver"] for d in detail.get("decisions", []) if d.get("verdict") == "approve"})


def describe(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{row['gate']} ({row['status']})" for row in rows) or "none"
