"""The API's reads: runs, steps, logs, gates with their cards, the audit log, the caller's identity. The list of
open gates, which every page and waiting CI job polls, is cached per state of the store."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from lg.runs.gates import Gate
from lg.runs.report import run_document, status_document
from lg.runs.store import RunRecord
from lg.server.call import Call, Reply, find_gate, find_run, find_step, int_query
from lg.server.errors import bad_request, not_found
from lg.server.state import Cached
from lg.server.views import decision_view, gate_view, run_view, step_view

MAX_RUNS = 1000
_OPEN_GATES = "open-gates"  # the cache's key for the list of open gates


# --- runs, steps, logs ----------------------------------------------------------------------------------------


def list_runs(call: Call) -> Any:
    limit = int_query(call, "limit", 50, 1, MAX_RUNS)
    whole = call.query.get("records")
    if whole not in (None, "1"):
        raise bad_request("invalid_query", f"records={whole!r}: 1 (each run's whole record), or leave it out")
    view = run_document if whole else run_view
    return [view(record) for record in call.store.runs(limit)]


def get_run(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    gates = call.stores.gates().gates(record.id)
    return {**run_view(record), "steps": [step_view(s) for s in call.store.steps(record.id)],
            "gates": [gate_view(g, record) for g in gates]}


def run_status(call: Call) -> Any:
    """The run as `lg status --json` prints it where the store is (so `lg status --server` prints the same)."""
    record = find_run(call.store, call.params["run"])
    return status_document(call.store, record)


def list_steps(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    return [step_view(step) for step in call.store.steps(record.id)]


def step_log(call: Call) -> Reply:
    record = find_run(call.store, call.params["run"])
    step = find_step(call.store, record, call.params["step"])
    path = Path(step.log_path) if step.log_path else None
    if path is None or not path.is_file():
        raise not_found("no_log", f"step {step.step_id} of run {record.id} has no log (it has not run)")
    return Reply(content=path.read_bytes(), media_type="text/plain; charset=utf-8")


# --- gates ----------------------------------------------------------------------------------------------------


def pending_gates(call: Call) -> Any:
    store, gates = call.store, call.stores.gates()
    runs: dict[str, RunRecord] = {}
    rows = []
    for gate in gates.open_gates():
        record = runs.get(gate.run_id) or runs.setdefault(gate.run_id, store.run(gate.run_id))
        rows.append(gate_view(gate, record))
    return rows


def pending_gates_cached(call: Call) -> Reply:
    """The list of open gates, which every approver's page and every waiting CI job polls: built once per state
    of the store (see Stores.version) and served encoded until something changes or a gate is due to expire."""
    cached = cached_pending_gates(call)
    if cached is not None:
        return cached
    rows = pending_gates(call)  # may expire gates (a write): never on the event loop's thread
    version = call.stores.version()  # expiring gates on the way appended records: the state read is this one
    until = min((row["expires"] for row in rows if row["expires"] is not None), default=math.inf)
    call.stores.cache[_OPEN_GATES] = Cached(version, until, json.dumps(rows, separators=(",", ":")).encode())
    return Reply(content=call.stores.cache[_OPEN_GATES].body, media_type="application/json")


def cached_pending_gates(call: Call) -> Reply | None:
    """The cached list if it is still current, else None. Two reads of indexed rows, which SQLite readers in WAL
    mode make without waiting for writers: cheap enough for the event loop's thread."""
    cached = call.stores.cache.get(_OPEN_GATES)
    if cached is None or cached.version != call.stores.version() or time.time() >= cached.until:
        return None
    return Reply(content=cached.body, media_type="application/json")


def run_gates(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    return [gate_view(gate, record) for gate in call.stores.gates().gates(record.id)]


def get_gate(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    gate = find_gate(call, record, call.params["gate"])
    return gate_detail(call, record, gate)


def gate_detail(call: Call, record: RunRecord, gate: Gate) -> dict[str, Any]:
    decisions = call.stores.gates().decisions(gate)
    return {**gate_view(gate, record), "card": gate.card, "decisions": [decision_view(d) for d in decisions]}


# --- audit ------------------------------------------------------------------------------------------------------


def audit_verify(call: Call) -> Any:
    problems = call.store.verify_audit()
    count = sum(1 for _ in call.store.audit_log.records())
    return {"ok": not problems, "records": count, "problems": [{"seq": p.seq, "message": p.message} for p in problems]}


def audit_export(call: Call) -> Any:
    run_id = call.query.get("run")
    records = call.store.audit_log.records()
    return [record.to_json() for record in records if run_id is None or record.run_id == run_id]


def whoami(call: Call) -> Any:
    assert call.token is not None  # noqa: S101
    return {"name": call.token.name, "role": call.token.role.value, "token": call.token.id}


