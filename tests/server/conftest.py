"""`lg serve` for real: a subprocess on 127.0.0.1 on a free port, over a state store holding a run paused at a
gate, made by the real `lg run` command line on the fake backend (tests/runner/lg_on_fake.py: no VM boots)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lg.config.project import load_project_config
from lg.runs.store import RunStore
from lg.runs.tokens import Role, TokenStore
from lg.testing.images import stand_in_image
from tests.stores import StoreBackend, rows_of

REPO = Path(__file__).resolve().parents[2]
ON_FAKE = REPO / "tests" / "runner" / "lg_on_fake.py"
INITIATOR = "ci-bot@example.com"

# A dependency change: the default policy holds it at an effects gate (orange), with a diff per file.
DEPENDENCY_CHANGE = """\
    name: deps
    steps:
      - id: bump
        run: |
          echo '{"name": "app", "dependencies": {"left-pad": "1.3.0"}}' > package.json
          echo notes > notes.txt
"""

EXPLICIT_GATE = """\
    name: gated
    steps:
      - id: ship
        approve: {reason: a person looks first}
        run: echo shipped > shipped.txt
"""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str:
        return str(self.json["error"]["code"])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    state: Path

    def request(self, method: str, path: str, token: str | None = None, body: Any = None, *,
                raw: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,  # noqa: S310
                                         headers=headers or {})
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None and raw is None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - our own test server
                return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:  # shown in the report of a failing test
            print(self.process.stderr.read())


def start_server(state: Path | str, *args: str) -> Server:
    process = subprocess.Popen([sys.executable, "-m", "lg", "serve", "--listen", "127.0.0.1:0", "--state",
                                str(state), *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise AssertionError(f"lg serve did not start: {line}{process.communicate()[1]}")
    url = line.split("listening on ")[1].split()[0]
    return Server(url, process, Path(state) if isinstance(state, Path) else Path())


@dataclass
class Project:
    root: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None  # the PostgreSQL store (lg.yaml's `state:`), or None for SQLite in .lg

    @property
    def state(self) -> Path:
        return self.root / ".lg"

    @property
    def state_arg(self) -> str:
        """What `lg serve --state` is given: the directory, or the URL."""
        return self.url or str(self.state)

    def store(self) -> RunStore:
        return RunStore(self.state, self.url)

    def lg_on_fake(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ON_FAKE), str(self.tmp / "vms"), *args], cwd=self.root,
                              text=True, capture_output=True, env=self.env, timeout=timeout, check=False)

    def popen_on_fake(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(ON_FAKE), str(self.tmp / "vms"), *args], cwd=self.root,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)

    def pause(self, pipeline: str = DEPENDENCY_CHANGE) -> str:
        """Start a run that stops at its gate (exit 3); its id."""
        (self.root / "pipeline.yaml").write_text(textwrap.dedent(pipeline))
        result = self.lg_on_fake("run", "pipeline.yaml")
        assert result.returncode == 3, result.stderr
        store = self.store()
        try:
            return store.runs(1)[0].id
        finally:
            store.close()

    def token(self, name: str, role: Role) -> str:
        store = self.store()
        try:
            return TokenStore(store).create(name, role, "test")[1]
        finally:
            store.close()

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a refused request must leave as it was: the tables and the audit log."""
        store = self.store()
        try:
            return tuple(tuple(rows_of(store, table))
                         for table in ("runs", "steps", "gates", "decisions", "audit", "tokens"))
        finally:
            store.close()


@pytest.fixture
def server_backend() -> StoreBackend:
    """The store of the server tests: SQLite; a module that runs on both overrides it with `store_backend`."""
    return StoreBackend("sqlite")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: dict[str, Path],
            server_backend: StoreBackend) -> Project:
    root = tmp_path / "project"
    root.mkdir()
    url = server_backend.url(root / ".lg")
    state = f"state: '{url}'\n" if url else ""
    (root / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\npool: {snapshots: false}\npolicy: ./team.yaml\n"
                                  + state)
    (root / "team.yaml").write_text(textwrap.dedent(f"""\
        extends: default
        approvals:
          allowed_signers: {keys['allowed_signers']}
          require_signature: false
          allow_self_approval: false
    """))
    (root / "package.json").write_text('{"name": "app"}\n')
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.delenv("LG_STATE_URL", raising=False)
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    stand_in_image(load_project_config(root), "tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LG_USER": INITIATOR, "LG_CACHE_DIR": str(tmp_path / "cache")}
    return Project(root, tmp_path, env, url)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Ed25519 keys: alice and bob are in allowed_signers, mallory is not."""
    directory = tmp_path_factory.mktemp("keys")
    paths, lines = {}, []
    for name in ("alice", "bob", "mallory"):
        path = directory / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
        paths[name] = path
        if name != "mallory":
            kind, key = (directory / f"{name}.pub").read_text().split()[:2]
            lines.append(f"{name}@example.com {kind} {key}")
    (directory / "allowed_signers").write_text("\n".join(lines) + "\n")
    paths["allowed_signers"] = directory / "allowed_signers"
    return paths


@pytest.fixture
def serve(project: Project) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*args: str) -> Server:
        started.append(start_server(project.state_arg, *args))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def wait_until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
