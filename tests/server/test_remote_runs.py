"""Runs that outlive their machine (issue #17 "Done means"), three machines in one host: runner A runs
`lg run --server` in a clone and is deleted once it exits 3; approver B decides through the API with an
SSH-signed decision; runner C resumes in a fresh clone with `lg resume --server` and applies byte for byte;
the audit log on the server verifies. All on the fake backend (tests/runner/lg_on_fake.py: no VM boots)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from lg.approvals.decide import payload_for
from lg.approvals.signing import sign
from lg.runs.gates import GateStore
from lg.runs.states import RunStatus, StepStatus
from lg.runs.store import RunStore
from lg.runs.tokens import Role, TokenStore
from tests.server.conftest import DEPENDENCY_CHANGE, ON_FAKE, Project, Server, start_server, wait_until
from tests.stores import StoreBackend

LOGGED_CHANGE = DEPENDENCY_CHANGE.replace("        run: |\n", "        run: |\n          echo bumping left-pad\n")


@dataclass
class Machines:
    project: Project
    server: Server
    tokens: dict[str, str]
    origin: Path
    real_vms: bool = False  # lg itself, booting microVMs, instead of lg on the fake backend
    state_dir: Path = Path("server-state")  # the server's local files (logs, blobs); its rows too on SQLite
    state_url: str | None = None  # the server's PostgreSQL database, when it runs on one

    def start_server(self, *args: str) -> Server:
        """`lg serve` over the server's store (again, after a test stopped or killed it)."""
        return start_server(self.state_url or self.state_dir, *args)

    def clone(self, name: str) -> Path:
        target = self.project.tmp / name
        subprocess.run(["git", "clone", "-q", str(self.origin), str(target)], check=True)
        return target

    def lg(self, where: Path, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        scratch = self.project.tmp / f"tmp-{where.name}"
        scratch.mkdir(exist_ok=True)
        env = {**self.project.env, "LG_SERVER": self.server.url, "LG_TOKEN": self.tokens[token],
               "TMPDIR": str(scratch)}
        env.pop("LG_STATE_DIR", None)
        if self.real_vms:
            env.pop("LG_CACHE_DIR", None)  # the machine's image cache, with the images scripts/setup built
        launcher = [sys.executable, "-m", "lg"] if self.real_vms else [sys.executable, str(ON_FAKE),
                                                                        str(self.project.tmp / "vms")]
        return subprocess.run([*launcher, *args], cwd=where, text=True, capture_output=True, env=env,
                              timeout=900 if self.real_vms else 180, check=False)

    def server_store(self) -> RunStore:
        return RunStore(self.state_dir, self.state_url)


@pytest.fixture
def server_backend(store_backend: StoreBackend) -> StoreBackend:
    """Runs recorded on a server backed by SQLite (`lg serve --state DIR`) and by PostgreSQL (`--state
    postgresql://...`, its local files in LG_STATE_DIR)."""
    return store_backend


@pytest.fixture
def machines(project: Project, server_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch) -> Iterator[Machines]:
    yield from _machines(project, server_backend, monkeypatch)


def _machines(project: Project, backend: StoreBackend, monkeypatch: pytest.MonkeyPatch,
              real_vms: bool = False) -> Iterator[Machines]:
    (project.root / "pipeline.yaml").write_text(textwrap.dedent(LOGGED_CHANGE))
    origin = project.root
    subprocess.run(["git", "init", "-q"], cwd=origin, check=True)
    (origin / ".gitignore").write_text(".lg/\n")
    subprocess.run(["git", "add", "-A"], cwd=origin, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "project"],
                   cwd=origin, check=True)
    state = project.tmp / "server-state"
    url = backend.url(state)
    monkeypatch.setenv("LG_STATE_DIR", str(state))  # the server's local files, whichever store holds its rows
    store = RunStore(state, url)
    tokens = {name: TokenStore(store).create(f"{name}@example.com", role, "test")[1]
              for name, role in (("runner-a", Role.RUNNER), ("runner-c", Role.RUNNER),
                                 ("approver", Role.APPROVER), ("viewer", Role.VIEWER))}
    store.close()
    machines = Machines(project, start_server(url or state), tokens, origin, real_vms, state, url)
    try:
        yield machines
    finally:
        machines.server.stop()  # the one running now (a test may have killed and restarted it)


def pause_on_a(machines: Machines, gate: str = "bump.effects") -> str:
    """Runner A: the run pauses at its effects gate on the server (exit 3); then A's machine is gone."""
    a = machines.clone("runner-a")
    result = machines.lg(a, "runner-a", "run", "pipeline.yaml", "--server", machines.server.url)
    assert result.returncode == 3, result.stderr
    assert not (a / ".lg").exists()  # no local state directory
    assert list((machines.project.tmp / "tmp-runner-a").iterdir()) == []  # its scratch directory is removed
    (run,) = machines.server.request("GET", "/api/v1/runs", machines.tokens["viewer"]).json
    assert f"{machines.server.url}/runs/{run['id']}/gates/{gate}" in result.stderr  # the gate's page
    shutil.rmtree(a)
    return str(run["id"])


def approve_as_b(machines: Machines, run_id: str, keys: dict[str, Path]) -> None:
    gate = GateStore(machines.server_store()).gate(run_id, "bump.effects")
    assert gate is not None and gate.is_open
    payload = payload_for(gate, "approve", "looked at the diff")
    signed = {"payload": payload, "signature": sign(payload, keys["alice"])}
    answer = machines.server.request("POST", f"/api/v1/runs/{run_id}/gates/bump.effects/decisions",
                                     machines.tokens["approver"],
                                     {"verdict": "approve", "digest": gate.digest, "signed": signed})
    assert answer.status == 201, answer.body
    assert answer.json["status"] == "approved"
    assert answer.json["decisions"][0]["approver"] == "alice@example.com"


def test_paused_on_a_approved_by_b_resumed_on_c(machines: Machines, keys: dict[str, Path]) -> None:
    run_id = pause_on_a(machines)
    viewer = machines.tokens["viewer"]
    record = machines.server.request("GET", f"/api/v1/runs/{run_id}", viewer).json
    assert record["status"] == "awaiting_approval"
    assert record["initiator"] == "runner-a@example.com"  # the token's name, not what runner A's user is
    log = machines.server.request("GET", f"/api/v1/runs/{run_id}/steps/bump/log", viewer)
    assert log.status == 200 and b"bumping left-pad" in log.body  # uploaded before the run paused
    held = machines.server_store().step(run_id, "bump").changes
    approve_as_b(machines, run_id, keys)

    c = machines.clone("runner-c")
    resumed = machines.lg(c, "runner-c", "resume", run_id, "--server", machines.server.url)
    assert resumed.returncode == 0, resumed.stderr
    by_path = {change["path"]: change for change in held}
    for name in ("package.json", "notes.txt"):
        assert hashlib.sha256((c / name).read_bytes()).hexdigest() == by_path[name]["sha256"]
    assert json.loads((c / "package.json").read_text())["dependencies"] == {"left-pad": "1.3.0"}
    assert (c / "notes.txt").read_bytes() == b"notes\n"
    assert not (c / ".lg").exists()

    store = machines.server_store()
    assert store.run(run_id).status is RunStatus.SUCCEEDED
    assert store.step(run_id, "bump").status is StepStatus.SUCCEEDED
    kinds = [(r.kind, r.data.get("by")) for r in store.audit_log.records() if r.run_id == run_id]
    assert ("run.resumed", "runner-c@example.com") in kinds and ("effects.applied", None) in kinds
    verified = subprocess.run([sys.executable, "-m", "lg", "audit", "verify"], text=True, capture_output=True,
                              env={**machines.project.env, "LG_STATE_DIR": str(machines.state_dir),
                                   **({"LG_STATE_URL": machines.state_url} if machines.state_url else {})},
                              cwd=machines.project.tmp, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.vm
def test_paused_on_a_approved_by_b_resumed_on_c_in_real_vms(
        tiny_image_ready: None, project: Project, keys: dict[str, Path], server_backend: StoreBackend,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same three machines, each step in a real microVM (slow: two VM boots under TCG). Once, on the
    SQLite-backed server: the store behind the server does not change what the VMs do."""
    if server_backend.name != "sqlite":
        pytest.skip("the real-VM variant runs once, on the SQLite-backed server")
    for machines in _machines(project, server_backend, monkeypatch, real_vms=True):
        test_paused_on_a_approved_by_b_resumed_on_c(machines, keys)
        (run,) = machines.server_store().runs(1)
        assert machines.server_store().step(run.id, "bump").accelerator in ("tcg", "kvm")  # a real guest ran it


def test_a_workspace_that_moved_on_is_refused_and_nothing_is_applied(machines: Machines,
                                                                      keys: dict[str, Path]) -> None:
    run_id = pause_on_a(machines)
    approve_as_b(machines, run_id, keys)
    c = machines.clone("runner-c")
    (c / "package.json").write_text('{"name": "app", "version": "2"}\n')  # someone committed meanwhile
    before = {p.name: p.read_bytes() for p in c.iterdir() if p.is_file()}
    audit_before = len(list(machines.server_store().audit_log.records()))

    resumed = machines.lg(c, "runner-c", "resume", run_id, "--server", machines.server.url)
    assert resumed.returncode == 2, resumed.stderr
    assert "package.json" in resumed.stderr and "nothing was applied" in resumed.stderr
    assert {p.name: p.read_bytes() for p in c.iterdir() if p.is_file()} == before
    store = machines.server_store()
    assert store.run(run_id).status is RunStatus.AWAITING_APPROVAL  # not claimed: another checkout may resume it
    assert len(list(store.audit_log.records())) == audit_before


def test_cancel_through_the_server(machines: Machines) -> None:
    run_id = pause_on_a(machines)
    c = machines.clone("runner-c")
    cancelled = machines.lg(c, "runner-c", "cancel", run_id, "--server", machines.server.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert machines.server_store().run(run_id).status is RunStatus.CANCELLED
    again = machines.lg(c, "runner-c", "resume", run_id, "--server", machines.server.url)
    assert again.returncode == 2 and "already finished" in again.stderr


def _blob_request(machines: Machines, method: str, name: str, data: bytes | None = None,
                  token: str = "runner-a") -> tuple[int, dict[str, object], bytes]:  # noqa: S107
    answer = machines.server.request(method, f"/api/v1/blobs/{name}", machines.tokens[token], raw=data)
    return answer.status, (answer.json if answer.headers.get("content-type", "").startswith("application/json")
                           else {}), answer.body


def test_blobs_over_http(machines: Machines) -> None:
    data = b"a held file\n"
    name = hashlib.sha256(data).hexdigest()
    blobs = machines.state_dir / "blobs"
    status, body, _ = _blob_request(machines, "PUT", name, data)
    assert status == 201 and body == {"sha256": name, "size": len(data), "created": True}
    assert _blob_request(machines, "PUT", name, data)[0] == 200  # idempotent
    status, _, got = _blob_request(machines, "GET", name)
    assert status == 200 and got == data
    stored = sorted(p.name for p in blobs.iterdir())
    refusals: list[tuple[str, str, bytes | None, int, str, str]] = [
        ("PUT", "0" * 64, data, 400, "digest_mismatch", "runner-a"),
        ("PUT", "..", data, 400, "bad_blob_name", "runner-a"),
        ("PUT", "..%2F..%2Fetc%2Fpasswd", data, 404, "not_found", "runner-a"),  # no route takes a slash
        ("PUT", name.upper(), data, 400, "bad_blob_name", "runner-a"),
        ("GET", "f" * 64, None, 404, "unknown_blob", "runner-a"),
        ("PUT", name, data, 403, "missing_role", "approver"),
    ]
    for method, blob, payload, code, error, token in refusals:
        status, body, _ = _blob_request(machines, method, blob, payload, token)
        assert (status, body["error"]["code"]) == (code, error), (blob, body)  # type: ignore[index]
    assert sorted(p.name for p in blobs.iterdir()) == stored  # nothing stored by a refusal


def test_an_oversize_blob_is_refused_before_it_is_read(project: Project, machines: Machines) -> None:
    machines.server.stop()
    machines.server = machines.start_server("--blobs", str(project.tmp / "blobs"))
    big = b"x" * 1024
    answer = machines.server.request("PUT", f"/api/v1/blobs/{hashlib.sha256(big).hexdigest()}",
                                     machines.tokens["runner-a"], raw=big,
                                     headers={"Content-Length": str(512 * 1024 * 1024)})
    assert (answer.status, answer.error_code) == (413, "body_too_large")
    assert not (project.tmp / "blobs").exists() or not any((project.tmp / "blobs").iterdir())
    stored = machines.server.request("PUT", f"/api/v1/blobs/{hashlib.sha256(big).hexdigest()}",
                                     machines.tokens["runner-a"], raw=big)
    assert stored.status == 201
    assert (project.tmp / "blobs" / hashlib.sha256(big).hexdigest()).read_bytes() == big  # in --blobs DIR


def _call(machines: Machines, body: object, token: str = "runner-a") -> tuple[int, str]:  # noqa: S107
    answer = machines.server.request("POST", "/api/v1/runner/calls", machines.tokens[token], body)
    return answer.status, (answer.error_code if answer.status >= 400 else "")


def test_runner_calls_are_whitelisted_and_checked(machines: Machines) -> None:
    run_id = pause_on_a(machines)
    store = machines.server_store()
    audit_before = [r.hash for r in store.audit_log.records()]
    cases: list[tuple[object, int, str]] = [
        ({"method": "connection", "args": {}}, 400, "unknown_method"),
        ({"method": "run", "args": {}}, 400, "invalid_argument"),
        ({"method": "run", "args": {"run_id": run_id, "extra": 1}}, 400, "invalid_argument"),
        ({"method": "step", "args": {"run_id": run_id, "step_id": "../../x"}}, 400, "invalid_argument"),
        ({"method": "audit", "args": {"run_id": run_id, "kind": "gate.approved", "data": {}}}, 400,
         "invalid_argument"),
        ({"method": "finish_run", "args": {"run_id": run_id, "status": "bogus", "exit_code": 0, "error": None}},
         400, "invalid_argument"),
        ({"method": "start_run", "args": {"run_id": run_id}}, 409, "illegal_transition"),
        ({"method": "run", "args": {"run_id": run_id}}, 403, "missing_role"),
    ]
    for index, (body, status, code) in enumerate(cases):
        token = "approver" if index == len(cases) - 1 else "runner-a"
        assert _call(machines, body, token) == (status, code), body
    assert [r.hash for r in machines.server_store().audit_log.records()] == audit_before


def test_an_effects_gate_never_opens_before_its_files_are_uploaded(machines: Machines) -> None:
    run_id = pause_on_a(machines)
    store = machines.server_store()
    gate = GateStore(store).gate(run_id, "bump.effects")
    assert gate is not None
    subject = {**gate.subject, "changes": [{**c, "sha256": "e" * 64} for c in gate.subject["changes"]]}
    status, code = _call(machines, {"method": "gate_open", "args": {
        "run_id": run_id, "step_id": "bump", "kind": "effects", "subject": subject, "card": gate.card,
        "rules": {**asdict(gate.rules), "allowed_signers": None}, "allowed_signers_text": None}})
    assert (status, code) == (409, "effects_not_uploaded")
    assert GateStore(machines.server_store()).gate(run_id, "bump.effects") == gate


def test_the_allowed_signers_are_sent_as_content_and_kept_by_the_server(machines: Machines) -> None:
    """A runner's path means nothing on the server, and a path the server read on a runner's word could name
    any of its files: the runner sends the file's content, the server keeps it by digest and checks the gate's
    signatures against its own copy; a runner naming a path is refused."""
    run_id = pause_on_a(machines)
    gate = GateStore(machines.server_store()).gate(run_id, "bump.effects")
    assert gate is not None and gate.rules.allowed_signers is not None
    kept = Path(gate.rules.allowed_signers)
    assert kept.parent == machines.state_dir / "signers" and "alice@example.com" in kept.read_text()
    status, code = _call(machines, {"method": "gate_open", "args": {
        "run_id": run_id, "step_id": "bump", "kind": "explicit", "subject": {}, "card": gate.card,
        "rules": {**asdict(gate.rules), "allowed_signers": "/etc/ssh/ssh_host_ed25519_key.pub"},
        "allowed_signers_text": None}})
    assert (status, code) == (400, "invalid_argument")


THEN_A_LONG_STEP = LOGGED_CHANGE + """\
      - id: after
        needs: [bump]
        run: sleep 4; echo done > after.txt
"""


def test_a_server_killed_mid_resume_loses_nothing_and_applies_nothing_twice(machines: Machines,
                                                                             keys: dict[str, Path]) -> None:
    (machines.origin / "pipeline.yaml").write_text(textwrap.dedent(THEN_A_LONG_STEP))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "longer"],
                   cwd=machines.origin, check=True)
    run_id = pause_on_a(machines)
    approve_as_b(machines, run_id, keys)
    c = machines.clone("runner-c")
    env = {**machines.project.env, "LG_SERVER": machines.server.url, "LG_TOKEN": machines.tokens["runner-c"]}
    resuming = subprocess.Popen([sys.executable, str(ON_FAKE), str(machines.project.tmp / "vms"), "resume", run_id],
                                cwd=c, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        wait_until(lambda: machines.server_store().step(run_id, "after").status is StepStatus.RUNNING)
        machines.server.process.kill()  # SIGKILL: bump's effects are applied and recorded, `after` is running
        machines.server.process.wait()
        _, stderr = resuming.communicate(timeout=120)
    finally:
        if resuming.poll() is None:
            resuming.kill()
            resuming.wait()
    assert resuming.returncode == 5, stderr  # the server is gone: nothing more can be recorded
    applied_once = json.loads((c / "package.json").read_text())

    machines.server = machines.start_server()  # the server comes back, on another port
    again = machines.lg(c, "runner-c", "resume", run_id, "--server", machines.server.url)
    assert again.returncode == 0, again.stderr
    assert json.loads((c / "package.json").read_text()) == applied_once == {
        "name": "app", "dependencies": {"left-pad": "1.3.0"}}
    assert (c / "after.txt").read_text() == "done\n"
    store = machines.server_store()
    assert store.verify_audit() == []
    records = [r for r in store.audit_log.records() if r.run_id == run_id]
    assert [r.data["step"] for r in records if r.kind == "effects.applied"] == ["bump", "after"]  # bump once
    assert [r.kind for r in records if r.kind == "gate.decision"] == ["gate.decision"]  # the decision survived
    assert store.run(run_id).status is RunStatus.SUCCEEDED


def test_a_runner_waiting_at_a_gate_on_the_server_goes_on_once_approved(machines: Machines,
                                                                         keys: dict[str, Path]) -> None:
    a = machines.clone("runner-a")
    env = {**machines.project.env, "LG_SERVER": machines.server.url, "LG_TOKEN": machines.tokens["runner-a"]}
    waiting = subprocess.Popen([sys.executable, str(ON_FAKE), str(machines.project.tmp / "vms"), "run",
                                "pipeline.yaml", "--wait"], cwd=a, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    try:
        def gate_open() -> bool:
            runs = machines.server_store().runs(1)
            return bool(runs) and bool(GateStore(machines.server_store()).gates(runs[0].id))

        wait_until(gate_open)
        run_id = machines.server_store().runs(1)[0].id
        approve_as_b(machines, run_id, keys)
        _, stderr = waiting.communicate(timeout=120)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, stderr
    assert (a / "notes.txt").read_bytes() == b"notes\n"
    assert machines.server_store().run(run_id).status is RunStatus.SUCCEEDED


ARTIFACTS_ACROSS_A_GATE = """\
    name: artifacts
    steps:
      - id: build
        run: mkdir -p dist && echo app > dist/app.whl
        artifacts: [dist/]
      - id: ship
        needs: [build]
        approve: {reason: a person looks first}
        run: echo shipped > shipped.txt
        artifacts_from: {build: null}
"""


def test_artifacts_kept_on_a_are_recorded_on_the_server_and_delivered_on_c(machines: Machines) -> None:
    (machines.origin / "pipeline.yaml").write_text(textwrap.dedent(ARTIFACTS_ACROSS_A_GATE))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "artifacts"],
                   cwd=machines.origin, check=True)
    run_id = pause_on_a(machines, "ship.before")
    kept = machines.state_dir / "runs" / run_id / "artifacts"
    assert (kept / "build" / "dist" / "app.whl").read_bytes() == b"app\n"
    assert json.loads((kept / "build.json").read_text()) == [
        {"step": "build", "path": "dist/app.whl", "size": 4, "sha256": hashlib.sha256(b"app\n").hexdigest()}]
    gate = GateStore(machines.server_store()).gate(run_id, "ship.before")
    assert gate is not None
    answer = machines.server.request("POST", f"/api/v1/runs/{run_id}/gates/ship.before/decisions",
                                     machines.tokens["approver"], {"verdict": "approve", "digest": gate.digest})
    assert answer.status == 201, answer.body
    c = machines.clone("runner-c")
    (c / "dist").mkdir()
    (c / "dist" / "app.whl").write_text("app\n")  # build's change, as the checkout of its commit would hold it
    resumed = machines.lg(c, "runner-c", "resume", run_id, "--server", machines.server.url)
    assert resumed.returncode == 0, resumed.stderr  # `ship` received build's artifacts (else: ArtifactMissing)
    assert (c / "shipped.txt").read_text() == "shipped\n"
