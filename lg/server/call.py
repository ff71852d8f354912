"""What every API handler gets (Call) and may give back (Reply), and how it finds what a request names: a run by
its exact id, a gate, a step, or a 404 naming what is missing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lg.errors import InvalidInput
from lg.runs.gates import Gate
from lg.runs.store import RunRecord, RunStore, StepRecord
from lg.runs.tokens import Token
from lg.server.errors import bad_request, not_found
from lg.server.state import ServerConfig, Stores


@dataclass(frozen=True)
class Call:
    """One request, as a handler sees it."""

    stores: Stores
    config: ServerConfig
    token: Token | None
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = None

    @property
    def store(self) -> RunStore:
        return self.stores.runs()


@dataclass(frozen=True)
class Reply:
    """A handler's answer when it is not plain JSON with status 200."""

    data: Any = None
    status: int = 200
    content: bytes | None = None
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


# --- finding things -------------------------------------------------------------------------------------------


def find_run(store: RunStore, run_id: str) -> RunRecord:
    """The run with exactly this id (no prefixes over HTTP: a client names what it saw)."""
    try:
        record = store.run(run_id)
    except InvalidInput:
        record = None
    if record is None or record.id != run_id:
        raise not_found("unknown_run", f"no run {run_id!r}")
    return record


def find_gate(call: Call, record: RunRecord, gate_id: str) -> Gate:
    gates = call.stores.gates()
    gates.expire_due()
    gate = gates.gate(record.id, gate_id)
    if gate is None:
        known = ", ".join(g.gate_id for g in gates.gates(record.id)) or "none"
        raise not_found("unknown_gate", f"run {record.id} has no gate {gate_id!r} (its gates: {known})")
    return gate


def find_step(store: RunStore, record: RunRecord, step_id: str) -> StepRecord:
    for step in store.steps(record.id):
        if step.step_id == step_id:
            return step
    raise not_found("unknown_step", f"run {record.id} has no step {step_id!r}")


def int_query(call: Call, name: str, default: int, low: int, high: int) -> int:
    text = call.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise bad_request("invalid_query", f"{name}={text!r}: a whole number from {low} to {high}")
    return value


