"""Concurrent and interrupted decisions through a real `lg serve`: 50 approvals of one gate at once give exactly
one transition and 49 clear refusals; a server killed with SIGKILL while decisions stream in loses none it
acknowledged, and its store and audit log stay sound."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter
from collections.abc import Callable

import pytest

from lg.runs.gates import GateStore
from lg.runs.tokens import Role
from tests.server.conftest import EXPLICIT_GATE, Project, Response, Server
from tests.stores import StoreBackend

APPROVERS = 50


@pytest.fixture
def server_backend(store_backend: StoreBackend) -> StoreBackend:
    """These tests run on both stores: `lg serve --state DIR` and `lg serve --state postgresql://...`."""
    return store_backend


def test_fifty_concurrent_approvals_make_exactly_one_transition(project: Project,
                                                                serve: Callable[..., Server]) -> None:
    run_id = project.pause(EXPLICIT_GATE)
    tokens = [project.token(f"approver{i}@example.com", Role.APPROVER) for i in range(APPROVERS)]
    server = serve()
    gate = GateStore(project.store()).open_gates()[0]
    answers: list[Response] = []
    ready = threading.Barrier(APPROVERS)

    def approve(token: str) -> None:
        ready.wait()
        answers.append(server.request("POST", f"/api/v1/runs/{run_id}/gates/{gate.gate_id}/decisions", token,
                                      {"verdict": "approve", "digest": gate.digest, "comment": "go"}))

    threads = [threading.Thread(target=approve, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = Counter(answer.status for answer in answers)
    assert statuses == {201: 1, 409: APPROVERS - 1}, [a.body for a in answers if a.status not in (201, 409)]
    for answer in answers:
        if answer.status == 409:
            assert answer.error_code in ("gate_closed", "decision_refused")
            assert "already approved" in answer.json["error"]["message"]
    store = project.store()
    kinds = Counter(record.kind for record in store.audit_log.records())
    assert (kinds["gate.approved"], kinds["gate.decision"]) == (1, 1)
    assert len(GateStore(store).decisions(gate)) == 1
    assert store.verify_audit() == []


def test_a_killed_server_loses_no_acknowledged_decision(project: Project, serve: Callable[..., Server]) -> None:
    runs = [project.pause(EXPLICIT_GATE) for _ in range(6)]
    token = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    gates = {gate.run_id: gate for gate in GateStore(project.store()).open_gates()}
    acknowledged: list[str] = []
    first = threading.Event()

    def approve(run_id: str) -> None:
        gate = gates[run_id]
        try:
            answer = server.request("POST", f"/api/v1/runs/{run_id}/gates/{gate.gate_id}/decisions", token,
                                    {"verdict": "approve", "digest": gate.digest})
        except OSError:  # the connection died with the server: not acknowledged
            return
        if answer.status == 201:
            acknowledged.append(run_id)
            first.set()

    threads = [threading.Thread(target=approve, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    assert first.wait(60)
    server.process.send_signal(signal.SIGKILL)  # mid-stream: the others are in flight or not yet sent
    server.process.wait()
    for thread in threads:
        thread.join()
    assert acknowledged
    store = project.store()
    store.check_integrity()
    assert store.verify_audit() == []
    gate_store = GateStore(store)
    for run_id in runs:
        gate = gate_store.gate(run_id, gates[run_id].gate_id)
        assert gate is not None
        decisions = gate_store.decisions(gate)
        if run_id in acknowledged:
            assert gate.status == "approved" and len(decisions) == 1
        else:  # never half-recorded: a decision without its transition, or the reverse
            assert (gate.status, len(decisions)) in (("open", 0), ("approved", 1))
    # and a new server over the same store serves them as they are
    again = serve()
    listed = again.request("GET", "/api/v1/audit/verify", project.token("viewer@example.com", Role.VIEWER)).json
    assert listed["ok"], json.dumps(listed)
    approved = project.store().connection.execute(
        "SELECT count(*) FROM gates WHERE status = 'approved'").fetchone()[0]
    assert approved >= len(acknowledged)
