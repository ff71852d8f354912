"""`lg review` against a real `lg serve` (tests/server/conftest.py): the gates come from the API, decisions are
posted to it (signed on the reviewer's side with a key), a gate decided through the server by someone else
updates in place, and one decided between the reviewer's last look and its key press is refused by the server
(409) and shown as decided elsewhere. End to end in tmux: `lg review --server`, approve, then the run resumes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from lg.client.gates import RemoteGates
from lg.client.http import ApiClient
from lg.client.settings import ServerSettings
from lg.review.app import ReviewApp
from lg.review.http_source import HttpGateSource
from lg.runs.tokens import Role
from tests.review.test_review_app import screen, settle
from tests.review.test_review_tmux import Terminal
from tests.server.conftest import Project, Server
from tests.server.test_api import TWO_APPROVALS

Scenario = Callable[[ReviewApp, Pilot[int]], Awaitable[None]]
GATE = "bump.effects"


def drive(source: HttpGateSource, scenario: Scenario, **options: Any) -> ReviewApp:
    app = ReviewApp(source, poll_seconds=options.pop("poll_seconds", 0.1), **options)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            for _ in range(60):
                if "[1/" in screen(app):
                    break
                await pilot.pause(0.05)
            await scenario(app, pilot)

    asyncio.run(main())
    return app


def source_for(server: Server, token: str) -> HttpGateSource:
    return HttpGateSource(RemoteGates(ApiClient(ServerSettings(server.url, token))))


def decisions(server: Server, token: str, run_id: str, gate: str = GATE) -> list[tuple[str, str, bool]]:
    detail = server.request("GET", f"/api/v1/runs/{run_id}/gates/{gate}", token).json
    return [(d["approver"], d["verdict"], d["signed"]) for d in detail["decisions"]]


@pytest.fixture
def paused(project: Project, serve: Callable[..., Server]) -> tuple[str, Server, dict[str, str]]:
    run_id = project.pause()
    tokens = {"approver": project.token("approver@example.com", Role.APPROVER),
              "carol": project.token("carol@example.com", Role.APPROVER)}
    return run_id, serve(), tokens


def test_the_gate_from_the_server_is_shown_and_approved(paused: tuple[str, Server, dict[str, str]]) -> None:
    run_id, server, tokens = paused

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        text = screen(app)
        assert f"1 open gate · {server.url}" in text and run_id in text and "🟠 ORANGE" in text
        assert "effects.dependencies" in text and "0/1" in text
        await pilot.press("a", *"looked at it", "enter")
        await settle(pilot, 6)
        message = " ".join(str(app.query_one("#message").render()).split())  # folded on the screen
        assert "approve recorded for bump.effects; gate is approved" in message
        assert f"continue it with: lg resume {run_id}" in message and "0 open gates" in screen(app)

    app = drive(source_for(server, tokens["approver"]), scenario)
    assert app.decided == [(run_id, GATE, "approve")]
    assert decisions(server, tokens["approver"], run_id) == [("approver@example.com", "approve", False)]


def test_signed_with_a_key_on_the_reviewers_side(paused: tuple[str, Server, dict[str, str]],
                                                 keys: dict[str, Path]) -> None:
    run_id, server, tokens = paused

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("a", "enter")
        await settle(pilot, 6)
        assert "approve recorded" in screen(app)

    drive(source_for(server, tokens["approver"]), scenario, key=keys["alice"])
    assert decisions(server, tokens["approver"], run_id) == [("alice@example.com", "approve", True)]


def test_decided_through_the_server_meanwhile_updates_in_place(paused: tuple[str, Server, dict[str, str]]) -> None:
    run_id, server, tokens = paused

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        digest = server.request("GET", "/api/v1/gates", tokens["carol"]).json[0]["digest"]
        answer = server.request("POST", f"/api/v1/runs/{run_id}/gates/{GATE}/decisions", tokens["carol"],
                                {"verdict": "approve", "digest": digest, "comment": "from the page"})
        assert answer.status == 201
        for _ in range(40):
            await pilot.pause(0.05)
            if "decided elsewhere" in screen(app):
                break
        text = screen(app)
        assert "APPROVED approved by" in text and "approvals 1/1" in text and "decided elsewhere" in text
        assert "0 open gates" in text and "decided elsewhere: approved by carol@example.com" in text
        await pilot.press("a")
        assert "is already approved" in screen(app) and "cannot be decided again" in screen(app)

    drive(source_for(server, tokens["approver"]), scenario)
    assert decisions(server, tokens["approver"], run_id) == [("carol@example.com", "approve", False)]


def test_a_409_after_the_last_look_is_shown_as_decided_elsewhere(paused: tuple[str, Server, dict[str, str]]
                                                                 ) -> None:
    run_id, server, tokens = paused

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("a", *"ok")  # the dialog is open: the gate was open when it was checked
        digest = server.request("GET", "/api/v1/gates", tokens["carol"]).json[0]["digest"]
        server.request("POST", f"/api/v1/runs/{run_id}/gates/{GATE}/decisions", tokens["carol"],
                       {"verdict": "reject", "digest": digest, "comment": "no"})
        await pilot.press("enter")
        await settle(pilot)
        text = screen(app)
        assert "not recorded" in text and "decided elsewhere" in text and "REJECTED" in text

    app = drive(source_for(server, tokens["approver"]), scenario, poll_seconds=30)  # no poll: the server refuses
    assert app.decided == []
    assert decisions(server, tokens["approver"], run_id) == [("carol@example.com", "reject", False)]


def test_review_over_the_server_in_tmux_then_the_run_resumes(paused: tuple[str, Server, dict[str, str]],
                                                             project: Project, tmp_path: Path) -> None:
    run_id, server, tokens = paused
    elsewhere = tmp_path / "elsewhere"  # the reviewer's machine: no lg.yaml, no state directory
    elsewhere.mkdir()
    env = {k: v for k, v in project.env.items() if k not in ("NO_COLOR", "LG_STATE_DIR", "TMUX", "LG_USER")}
    env.update(LG_TOKEN=tokens["approver"], LG_STATE_DIR=str(tmp_path / "no-state-here"))
    terminal = Terminal(tmp_path / "tmux.sock")
    try:
        terminal.start([sys.executable, "-m", "lg", "review", "--server", server.url], elsewhere, env)
        shown = terminal.wait_for("effects gate bump.effects")
        assert server.url in terminal.wait_until(lambda s: "[1/" in s and "q quit" in s, "the key line")
        assert run_id in shown
        terminal.keys("a")
        terminal.wait_for("comment (optional)")
        terminal.type_in_dialog("reviewed over http")
        terminal.keys("Enter")
        assert "APPROVED" in terminal.wait_for("approve recorded for bump.effects")
        terminal.keys("q")
        assert terminal.exit_status() == 0
    finally:
        terminal.kill()
    resumed = project.lg_on_fake("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((project.root / "package.json").read_text())["dependencies"] == {"left-pad": "1.3.0"}
    assert decisions(server, tokens["approver"], run_id) == [("approver@example.com", "approve", False)]


def test_a_gate_that_needs_two_approvals_counts_them(project: Project, serve: Callable[..., Server]) -> None:
    run_id = project.pause(TWO_APPROVALS)
    approver = project.token("approver@example.com", Role.APPROVER)
    carol = project.token("carol@example.com", Role.APPROVER)
    server = serve()
    path = f"/api/v1/runs/{run_id}/gates/ship.before"

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        assert "0/2" in screen(app)
        await pilot.press("a", "enter")
        await settle(pilot, 6)
        assert "approve recorded for ship.before; gate is open" in screen(app) and "1/2" in screen(app)
        digest = server.request("GET", path, carol).json["digest"]
        assert server.request("POST", f"{path}/decisions", carol, {"verdict": "approve", "digest": digest}
                              ).status == 201
        for _ in range(40):
            await pilot.pause(0.05)
            if "2/2" in screen(app):
                break
        assert "2/2" in screen(app) and "approved" in screen(app) and "0 open gates" in screen(app)

    drive(source_for(server, approver), scenario)
    assert {d[0] for d in decisions(server, approver, run_id, "ship.before")} == {"approver@example.com",
                                                                                 "carol@example.com"}
