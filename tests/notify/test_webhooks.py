"""Webhooks on gate events, sent to a real HTTP receiver on 127.0.0.1 by the real `lg` command line (on the fake
backend: tests/runner/lg_on_fake.py) and by lg.notify.webhooks directly: signed, in order, retried, bounded."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lg.config.project import load_project_config
from lg.errors import ExitCode
from lg.model import WebhookSpec
from lg.notify import webhooks
from lg.notify.webhooks import deliver
from lg.testing.images import stand_in_image

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "runner" / "lg_on_fake.py"
KEY = "s3cret-webhook-key"

GATED = """\
    name: gated
    steps:
      - id: deploy
        approve: {reason: production}
        run: echo deployed > deployed.txt
"""


@dataclass
class Receiver:
    """An HTTP endpoint that records what it is sent and answers with the statuses it is told, in order
    (200 once they run out)."""

    answers: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def events(self) -> list[str]:
        return [r["headers"]["x-lg-event"] for r in self.received if r["status"] == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = state.answers.pop(0) if state.answers else 200
            headers = {name.lower(): value for name, value in self.headers.items()}
            state.received.append({"headers": headers, "body": body, "status": status})
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "lg.yaml").write_text(textwrap.dedent(f"""\
        image: tiny
        state_dir: .lg
        pool: {{snapshots: false}}
        webhooks:
          - {{url: "{receiver.url}", secret_env: LG_TEST_HOOK_KEY}}
        """))
    (root / "pipeline.yaml").write_text(textwrap.dedent(GATED))
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LG_TEST_HOOK_KEY", KEY)
    stand_in_image(load_project_config(root), "tiny")
    return root


def lg(root: Path, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LG_TEST_HOOK_KEY", None)
    if key is not None:
        env["LG_TEST_HOOK_KEY"] = key
    return subprocess.run([sys.executable, str(HELPER), str(root.parent / "vms"), *args], cwd=root, text=True,
                          capture_output=True, env=env, timeout=120, check=False)


def verify(request: dict[str, Any]) -> dict[str, Any]:
    """What a receiver does: check the signature over `t.body`, then read the JSON."""
    fields = dict(part.split("=", 1) for part in request["headers"]["x-lg-signature"].split(","))
    expected = hmac.new(KEY.encode(), f"{fields['t']}.".encode() + request["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"]), "bad signature"
    assert abs(time.time() - int(fields["t"])) < 300
    body: dict[str, Any] = json.loads(request["body"])
    assert body["delivery"] == request["headers"]["x-lg-delivery"]
    return body


def test_lg_run_and_lg_approve_announce_the_gate_and_its_decision(project: Path, receiver: Receiver) -> None:
    paused = lg(project, "run", "pipeline.yaml")
    assert paused.returncode == ExitCode.AWAITING_APPROVAL, paused.stderr
    (opened,) = [verify(r) for r in receiver.received]
    assert opened["event"] == "gate.opened" and opened["step"] == "deploy"
    run, gate, digest = opened["run"], opened["gate"], opened["digest"]
    assert opened["commands"]["approve"] == f"lg approve {run} {gate} --digest {digest}"
    approved = lg(project, "approve", run, gate, "--digest", digest, "--comment", "ok")
    assert approved.returncode == 0, approved.stderr
    decided = verify(receiver.received[-1])
    assert (decided["event"], decided["status"], decided["run"], decided["gate"]) == (
        "gate.decided", "approved", run, gate)
    assert lg(project, "resume", run).returncode == 0
    assert receiver.events() == ["gate.opened", "gate.decided"]  # nothing twice


def test_a_failing_receiver_is_retried_and_a_refusing_one_dead_lettered(project: Path, receiver: Receiver) -> None:
    receiver.answers = [500, 503]  # then 200
    assert lg(project, "run", "pipeline.yaml").returncode == ExitCode.AWAITING_APPROVAL
    assert [r["status"] for r in receiver.received] == [500, 503, 200]
    assert len({r["headers"]["x-lg-delivery"] for r in receiver.received}) == 1  # the same delivery, retried

    receiver.answers = [400]  # refused for good: not retried, set aside, and later events still go out
    run = verify(receiver.received[-1])["run"]
    assert lg(project, "reject", run, "--reason", "no").returncode == 0
    assert receiver.received[-1]["status"] == 400
    letters = (project / ".lg" / "webhooks" / "dead-letters.jsonl").read_text().splitlines()
    assert json.loads(letters[0])["reason"].startswith("HTTP 400")
    assert lg(project, "run", "pipeline.yaml").returncode == ExitCode.AWAITING_APPROVAL
    assert receiver.received[-1]["status"] == 200 and verify(receiver.received[-1])["event"] == "gate.opened"


def test_no_key_no_delivery_and_the_events_wait(project: Path, receiver: Receiver) -> None:
    paused = lg(project, "run", "pipeline.yaml", key=None)
    assert paused.returncode == ExitCode.AWAITING_APPROVAL
    assert receiver.received == [] and "LG_TEST_HOOK_KEY is not set" in paused.stderr
    config = load_project_config(project)
    result = deliver(config.state_dir, config.webhooks, 5, print)  # the key is in this process's environment
    assert result.delivered == 1 and not result.pending
    assert verify(receiver.received[0])["event"] == "gate.opened"


def test_an_unreachable_receiver_costs_bounded_time_and_keeps_the_event(project: Path, receiver: Receiver,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert lg(project, "run", "pipeline.yaml").returncode == ExitCode.AWAITING_APPROVAL
    config = load_project_config(project)
    down = (WebhookSpec("http://127.0.0.1:9/closed", "LG_TEST_HOOK_KEY"),)  # the discard port: nothing listens
    # A receiver seen for the first time starts from now: the gate opened before it was configured is not news.
    assert deliver(config.state_dir, down, 1.0, lambda _text: None) == webhooks.PassResult()
    assert lg(project, "run", "pipeline.yaml").returncode == ExitCode.AWAITING_APPROVAL  # news for both
    started = time.monotonic()
    first = deliver(config.state_dir, down, 1.0, lambda _text: None)
    assert first.pending and first.delivered == 0 and time.monotonic() - started < 5
    cursors = [json.loads(path.read_text()) for path in (config.state_dir / "webhooks").glob("*.json")]
    (attempts,) = [cursor["attempts"] for cursor in cursors if cursor["url"] == down[0].url]
    assert attempts >= 1  # recorded, so a later pass knows how often it failed
    monkeypatch.setattr(webhooks, "MAX_ATTEMPTS", attempts + 1)
    gave_up = deliver(config.state_dir, down, 1.0, lambda _text: None)
    assert gave_up.dead == 1 and not gave_up.pending
    assert receiver.events() == ["gate.opened", "gate.opened"]  # the working receiver was not held up


def test_a_waiting_run_announces_its_gate_while_it_waits(project: Path, receiver: Receiver) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    waiting = subprocess.Popen([sys.executable, str(HELPER), str(project.parent / "vms"), "run", "pipeline.yaml",
                                "--wait"], cwd=project, env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not receiver.received and time.monotonic() < deadline and waiting.poll() is None:
            time.sleep(0.1)
        assert waiting.poll() is None, "lg run --wait ended before it was told"
        opened = verify(receiver.received[0])
        assert opened["event"] == "gate.opened"
        assert lg(project, "approve", opened["run"], opened["gate"]).returncode == 0
        _, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert receiver.events() == ["gate.opened", "gate.decided"]
    assert (project / "deployed.txt").read_text() == "deployed\n"


def test_lg_webhooks_deliver(project: Path, receiver: Receiver) -> None:
    assert lg(project, "run", "pipeline.yaml", key=None).returncode == ExitCode.AWAITING_APPROVAL
    assert lg(project, "webhooks", "deliver", key=None).returncode == ExitCode.FAILED
    sent = lg(project, "webhooks", "deliver")
    assert sent.returncode == 0 and "delivered 1 event(s)" in sent.stdout
    (project / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\n")
    assert lg(project, "webhooks", "deliver").returncode == ExitCode.INVALID_INPUT
