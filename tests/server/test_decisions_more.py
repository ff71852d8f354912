"""More of the decision path through a real server: a rejection stops the run, an expiring gate leaves the
(cached) list of open gates on time, and a tampered audit log takes no decision at all."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from lg.runs.gates import GateStore
from lg.runs.tokens import Role
from tests.server.conftest import EXPLICIT_GATE, Project, Server

EXPIRING = """\
    name: expiring
    steps:
      - id: ship
        approve: {reason: quick look, timeout: 3s}
        run: echo shipped > shipped.txt
"""


def test_a_rejection_with_its_reason_stops_the_run(project: Project, serve: Callable[..., Server]) -> None:
    run_id = project.pause(EXPLICIT_GATE)
    token = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    gate = GateStore(project.store()).open_gates()[0]
    answer = server.request("POST", f"/api/v1/runs/{run_id}/gates/{gate.gate_id}/decisions", token,
                            {"verdict": "reject", "digest": gate.digest[:16], "comment": "not this week"})
    assert answer.status == 201 and answer.json["status"] == "rejected"
    assert answer.json["outcome"] == "rejected by approver@example.com: not this week"
    resumed = project.lg_on_fake("resume", run_id)
    assert resumed.returncode == 4 and not (project.root / "shipped.txt").exists()


def test_an_expired_gate_leaves_the_open_list_on_time(project: Project, serve: Callable[..., Server]) -> None:
    project.pause(EXPIRING)
    token = project.token("viewer@example.com", Role.VIEWER)
    server = serve()
    (listed,) = server.request("GET", "/api/v1/gates", token).json
    time.sleep(max(0.0, listed["expires"] - time.time()) + 0.2)
    assert server.request("GET", "/api/v1/gates", token).json == []
    gate = server.request("GET", f"/api/v1/runs/{listed['run']}/gates/{listed['gate']}", token).json
    assert gate["status"] == "expired"


def test_a_tampered_audit_log_takes_no_decision(project: Project, serve: Callable[..., Server]) -> None:
    run_id = project.pause(EXPLICIT_GATE)
    token = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    gate = GateStore(project.store()).open_gates()[0]
    with sqlite3.connect(project.state / "lg.db") as db:
        db.execute("UPDATE audit SET data = replace(data, 'pipeline.yaml', 'other.yaml') WHERE seq = 1")
    before = project.snapshot()
    answer = server.request("POST", f"/api/v1/runs/{run_id}/gates/{gate.gate_id}/decisions", token,
                            {"verdict": "approve", "digest": gate.digest})
    assert (answer.status, answer.error_code) == (503, "audit_damaged")
    assert "refusing to add to it" in answer.json["error"]["message"]
    assert project.snapshot() == before
    verified = server.request("GET", "/api/v1/audit/verify", token).json
    assert not verified["ok"] and "edited" in verified["problems"][0]["message"]
