"""The CLI as a client of a real `lg serve` (tests/server/conftest.py): `lg pending`, `show`, `status` and `logs`
with --server print exactly what the local commands print on the server's machine; `lg approve` / `lg reject`
with --server post decisions bound to a digest, signed locally with --key or elsewhere (--signed), and every
refusal comes back with the local commands' exit codes and the server's own words.

The client commands run in another directory than the project (no lg.yaml, no state directory there): what
they print can only have come from the server."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lg.client.gates import GATE_FIELDS
from lg.runs.tokens import Role
from tests.server.conftest import REPO, Project, Server
from tests.stores import StoreBackend

Lg = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def server_backend(store_backend: StoreBackend) -> StoreBackend:
    """The server's store: its state directory, and PostgreSQL (`lg serve --state postgresql://...`)."""
    return store_backend


@pytest.fixture
def elsewhere(project: Project) -> Path:
    """A directory of another machine: no lg.yaml, no state directory."""
    path = project.tmp / "elsewhere"
    path.mkdir()
    return path


def lg_in(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lg", *args], cwd=cwd, text=True, capture_output=True, env=env,
                          timeout=120, check=False)


def client_env(project: Project, token: str | None) -> dict[str, str]:
    env = {**project.env, "COLUMNS": "100", "LG_STATE_DIR": str(project.tmp / "no-state-here")}
    env.pop("LG_SERVER", None)
    env.pop("LG_USER", None)  # the identity is the token's, never a local user name
    if token is None:
        env.pop("LG_TOKEN", None)
    else:
        env["LG_TOKEN"] = token
    return env


def local_env(project: Project) -> dict[str, str]:
    env = {**project.env, "COLUMNS": "100"}
    env.pop("LG_SERVER", None)
    env.pop("LG_TOKEN", None)
    return env


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def _timeless(text: str) -> str:
    """A paused run's age grows between two commands: its seconds (`lg status`) and its age (`lg runs`)."""
    text = re.sub(r"^(run \S+ .*?)\s[\d.]+s$", r"\1 Ns", text, flags=re.MULTILINE)
    return re.sub(r"\b\d+[smhd] ago$", "N ago", text, flags=re.MULTILINE)


def test_reads_print_what_the_local_commands_print(project: Project, serve: Callable[..., Server],
                                                   elsewhere: Path) -> None:
    run_id = project.pause()
    viewer = project.token("watcher@example.com", Role.VIEWER)
    server = serve()
    local, remote = local_env(project), client_env(project, viewer)
    for args in (("pending", "--json"), ("pending",), ("show", run_id, "--json"), ("show", run_id),
                 ("show", run_id, "bump.effects"), ("status", run_id, "--json"), ("status", run_id),
                 ("logs", run_id, "--json"), ("logs", run_id), ("logs", run_id, "bump"), ("runs", "--json"),
                 ("runs",), ("audit", "verify", "--json"), ("audit", "verify"), ("audit", "export", "--json")):
        here = ok(lg_in(project.root, local, *args))
        there = ok(lg_in(elsewhere, remote, *args, "--server", server.url))
        assert _timeless(there) == _timeless(here), args
    shown = json.loads(ok(lg_in(elsewhere, remote, "show", run_id, "--json", "--server", server.url)))
    assert shown["gate"] == "bump.effects" and "left-pad" in shown["card"]["command"]
    status = json.loads(ok(lg_in(elsewhere, remote, "status", run_id, "--json", "--server", server.url)))
    assert status["run"]["status"] == "awaiting_approval" and status["steps"][0]["status"] == "held"
    # LG_SERVER does what --server does
    assert json.loads(ok(lg_in(elsewhere, {**remote, "LG_SERVER": server.url}, "pending", "--json")))[0]["run"] \
        == run_id


def test_approve_with_a_key_then_the_run_resumes(project: Project, serve: Callable[..., Server], elsewhere: Path,
                                                 keys: dict[str, Path]) -> None:
    run_id = project.pause()
    approver = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    env = client_env(project, approver)
    out = ok(lg_in(elsewhere, env, "approve", run_id, "--key", str(keys["alice"]), "--comment", "reviewed",
                   "--server", server.url))
    detail = server.request("GET", f"/api/v1/runs/{run_id}/gates/bump.effects", approver).json
    assert f"gate bump.effects of run {run_id}: approve recorded; gate is approved" in out
    assert f"decided on digest {detail['digest'][:16]} (of the gate as fetched) at {server.url}" in out
    assert f"continue it with: lg resume {run_id}" in out
    # signed here with alice's key: recorded as its signer, not as the token's name
    assert [(d["approver"], d["signed"], d["comment"]) for d in detail["decisions"]] == \
        [("alice@example.com", True, "reviewed")]
    resumed = project.lg_on_fake("resume", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((project.root / "package.json").read_text())["dependencies"] == {"left-pad": "1.3.0"}
    assert server.request("GET", "/api/v1/audit/verify", approver).json["ok"]


def test_unsigned_approval_is_the_tokens_and_json_is_the_local_shape(project: Project, serve: Callable[..., Server],
                                                                    elsewhere: Path) -> None:
    run_id = project.pause()
    approver = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    digest = server.request("GET", "/api/v1/gates", approver).json[0]["digest"]
    out = ok(lg_in(elsewhere, client_env(project, approver), "approve", run_id, "bump.effects", "--digest",
                   digest[:16], "--json", "--server", server.url))
    settled = json.loads(out)
    assert settled["status"] == "approved" and settled["digest"] == digest
    assert json.loads(ok(lg_in(project.root, local_env(project), "pending", "--json"))) == []  # in the store
    assert tuple(settled) == GATE_FIELDS
    detail = server.request("GET", f"/api/v1/runs/{run_id}/gates/bump.effects", approver).json
    assert [(d["approver"], d["signed"]) for d in detail["decisions"]] == [("approver@example.com", False)]


def test_reject_needs_a_reason_and_is_recorded_signed(project: Project, serve: Callable[..., Server],
                                                      elsewhere: Path, keys: dict[str, Path]) -> None:
    run_id = project.pause()
    approver = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    env = client_env(project, approver)
    token_file = elsewhere / "token"
    token_file.write_text(approver + "\n")
    env.pop("LG_TOKEN")  # the token from --token-file this time
    missing = lg_in(elsewhere, env, "reject", run_id, "--server", server.url, "--token-file", str(token_file))
    assert missing.returncode == 2 and "--reason" in missing.stderr
    out = ok(lg_in(elsewhere, env, "reject", run_id, "--reason", "not this dependency", "--key", str(keys["bob"]),
                   "--server", server.url, "--token-file", str(token_file)))
    assert "reject recorded; gate is rejected" in out
    detail = server.request("GET", f"/api/v1/runs/{run_id}/gates/bump.effects", approver).json
    assert [(d["approver"], d["verdict"], d["comment"], d["signed"]) for d in detail["decisions"]] == [
        ("bob@example.com", "reject", "not this dependency", True)]
    env["LG_TOKEN"] = approver
    again = lg_in(elsewhere, env, "approve", run_id, "bump.effects", "--server", server.url)
    assert again.returncode == 4 and "decided elsewhere" in again.stderr and "gate_closed" in again.stderr


def test_sign_only_here_and_submit_signed_elsewhere(project: Project, serve: Callable[..., Server], elsewhere: Path,
                                                    keys: dict[str, Path]) -> None:
    run_id = project.pause()
    viewer = project.token("watcher@example.com", Role.VIEWER)
    approver = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    signed = elsewhere / "decision.json"
    out = ok(lg_in(elsewhere, client_env(project, viewer), "approve", run_id, "--key", str(keys["bob"]),
                   "--sign-only", str(signed), "--server", server.url))
    assert "written to" in out and server.request("GET", "/api/v1/gates", viewer).json != []  # nothing posted
    ok(lg_in(elsewhere, client_env(project, approver), "approve", run_id, "--signed", str(signed),
             "--server", server.url))
    detail = server.request("GET", f"/api/v1/runs/{run_id}/gates/bump.effects", viewer).json
    assert detail["status"] == "approved"
    assert [(d["approver"], d["signed"]) for d in detail["decisions"]] == [("bob@example.com", True)]


def test_refusals_keep_the_local_exit_codes(project: Project, serve: Callable[..., Server], elsewhere: Path,
                                            keys: dict[str, Path]) -> None:
    run_id = project.pause()
    viewer = project.token("watcher@example.com", Role.VIEWER)
    approver = project.token("approver@example.com", Role.APPROVER)
    server = serve()
    before = project.snapshot()

    stale = lg_in(elsewhere, client_env(project, approver), "approve", run_id, "--digest", "0" * 16, "--key",
                  str(keys["alice"]), "--server", server.url)
    assert stale.returncode == 4, stale.stderr
    assert "what was reviewed is not what would be approved" in stale.stderr and "stale_digest" in stale.stderr

    no_role = lg_in(elsewhere, client_env(project, viewer), "approve", run_id, "--server", server.url)
    assert no_role.returncode == 2, no_role.stderr
    assert "has role viewer, which may not decide" in no_role.stderr and "missing_role" in no_role.stderr

    no_token = lg_in(elsewhere, client_env(project, None), "pending", "--server", server.url)
    assert no_token.returncode == 2 and "LG_TOKEN" in no_token.stderr
    bad_token = lg_in(elsewhere, client_env(project, "lgt_nope_nope"), "pending", "--server", server.url)
    assert bad_token.returncode == 2 and "invalid_token" in bad_token.stderr

    odd = server.request("GET", "/api/v1/runs?records=yes", viewer)
    assert odd.status == 400 and odd.error_code == "invalid_query"

    unknown = lg_in(elsewhere, client_env(project, viewer), "status", "ffffffff", "--server", server.url)
    assert unknown.returncode == 2 and "no run 'ffffffff'" in unknown.stderr

    with socket.socket() as closed:  # bound, never listening: nobody answers there
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
        unreachable = lg_in(elsewhere, client_env(project, approver), "pending", "--server", nowhere)
    assert unreachable.returncode == 5 and "cannot reach lg serve" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr + stale.stderr + no_role.stderr + no_token.stderr
    assert project.snapshot() == before  # refused: nothing written, nothing audited


def test_help_stays_light() -> None:
    """--server on the read commands loads no HTTP code until a server is named."""
    probe = ("import sys; from lg.cli.main import main\n"
             "try:\n    main(['pending', '--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('lg.client.') or m == 'urllib.request'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    assert "lg.client.gates" not in out and "lg.client.http" not in out
