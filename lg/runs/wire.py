"""Run, step and gate records as JSON and back: what `lg serve` answers a remote runner's store calls with
(lg.server.runner_calls) and what the runner's remote store reads (lg.client.remote_store). The records'
own fields, nothing added, so both sides agree by construction."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from lg.errors import InvalidInput
from lg.runs.gates import Gate, GateRules
from lg.runs.states import GateStatus, RunStatus, StepStatus
from lg.runs.store import RunRecord, StepRecord


def encode(value: Any) -> Any:
    """A record (or a list of them, or a plain value) as JSON-ready data."""
    if isinstance(value, RunRecord | StepRecord | Gate):
        return asdict(value)
    if isinstance(value, list):
        return [encode(item) for item in value]
    return value


def run_record(data: Any) -> RunRecord:
    fields_ = _fields(RunRecord, data)
    return RunRecord(**{**fields_, "status": RunStatus(fields_["status"])})


def step_record(data: Any) -> StepRecord:
    fields_ = _fields(StepRecord, data)
    return StepRecord(**{**fields_, "status": StepStatus(fields_["status"])})


def gate(data: Any) -> Gate:
    fields_ = _fields(Gate, data)
    return Gate(**{**fields_, "status": GateStatus(fields_["status"]), "rules": GateRules.from_json(fields_["rules"])})


def _fields(kind: type, data: Any) -> dict[str, Any]:
    names = {field.name for field in fields(kind)}
    if not isinstance(data, dict) or not set(data) <= names:
        raise InvalidInput(f"the server answered with something that is not a {kind.__name__}: {str(data)[:200]}")
    return data
