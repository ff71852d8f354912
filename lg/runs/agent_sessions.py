"""The stored side of agent steps (lg.agent): each agent step's conversation and spend, and while it waits at a
tool-call gate, which gate, which call, and the VM snapshot it goes on from (schema migration 10 -> 11).

A session is saved at a gate and when the step ends; a step that was running when lg died starts over (its VM
was not saved), exactly as a plain step does: only a gate is a point to resume from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.runs.store import RunStore


@dataclass(frozen=True)
class AgentSession:
    run_id: str
    step_id: str
    conversation: Mapping[str, Any]
    spend: Mapping[str, Any]
    gate_id: str | None  # set while the step waits at a tool-call gate
    call: Mapping[str, Any] | None  # the gated call
    snapshot: Path | None  # the saved VM the call runs in once decided


class AgentSessions:
    def __init__(self, store: RunStore) -> None:
        self.store = store

    def save(self, run_id: str, step_id: str, conversation: Mapping[str, Any], spend: Mapping[str, Any], *,
             gate_id: str | None = None, call: Mapping[str, Any] | None = None,
             snapshot: Path | None = None) -> None:
        values = (json.dumps(conversation), json.dumps(spend), gate_id,
                  json.dumps(call) if call is not None else None, str(snapshot) if snapshot else None,
                  int(time.time()))
        with self.store.transaction() as db:
            db.execute("DELETE FROM agent_sessions WHERE run_id = ? AND step_id = ?", (run_id, step_id))
            db.execute("INSERT INTO agent_sessions (conversation, spend, gate_id, call, snapshot, updated, run_id,"
                       " step_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*values, run_id, step_id))

    def get(self, run_id: str, step_id: str) -> AgentSession | None:
        row = self.store.connection.execute(
            "SELECT * FROM agent_sessions WHERE run_id = ? AND step_id = ?", (run_id, step_id)).fetchone()
        return _session(row) if row is not None else None

    def of_run(self, run_id: str) -> list[AgentSession]:
        rows = self.store.connection.execute(
            "SELECT * FROM agent_sessions WHERE run_id = ? ORDER BY step_id", (run_id,)).fetchall()
        return [_session(row) for row in rows]


def _session(row: Any) -> AgentSession:
    return AgentSession(row["run_id"], row["step_id"], json.loads(row["conversation"]), json.loads(row["spend"]),
                        row["gate_id"], json.loads(row["call"]) if row["call"] else None,
                        Path(row["snapshot"]) if row["snapshot"] else None)
