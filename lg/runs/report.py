"""A run as `lg status --json` prints it: the run's record, its steps and its gates, as plain JSON values.

One builder for the local command and for `lg serve` (GET /api/v1/runs/RUN/status), so that `lg status --server`
prints byte for byte what `lg status` prints on the server's machine.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from lg.runs.agent_sessions import AgentSessions
from lg.runs.gates import GateStore
from lg.runs.store import RunRecord, RunStore


def run_document(record: RunRecord) -> dict[str, Any]:
    """The whole record, and whether its lg process is gone (judged where the store is)."""
    return {**asdict(record), "abandoned": record.abandoned}


def status_document(store: RunStore, record: RunRecord) -> dict[str, Any]:
    gates = GateStore(store).gates(record.id)
    return {"run": run_document(record),
            "steps": [asdict(step) for step in store.steps(record.id)],
            "gates": [{"gate": g.gate_id, "kind": g.kind, "status": g.status, "digest": g.digest,
                       "level": g.card.get("level"), "outcome": g.outcome} for g in gates],
            "agent_spend": agent_spend(store, record.id)}


def agent_spend(store: RunStore, run_id: str) -> dict[str, Any]:
    """What the run's agent steps spent (lg.agent.costs.Spend as JSON), each and in all; total None without any."""
    steps = {session.step_id: dict(session.spend) for session in AgentSessions(store).of_run(run_id)}
    total: dict[str, Any] | None = None
    for spend in steps.values():
        total = {key: (total or {}).get(key, 0) + value for key, value in spend.items()}
    return {"steps": steps, "total": total}
