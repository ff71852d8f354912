"""A run as `lg status --json` prints it: the run's record, its steps and its gates, as plain JSON values.

One builder for the local command and for `lg serve` (GET /api/v1/runs/RUN/status), so that `lg status --server`
prints byte for byte what `lg status` prints on the server's machine.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

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
                       "level": g.card.get("level"), "outcome": g.outcome} for g in gates]}
