"""lg.client against a real `lg serve` (tests/server/conftest.py starts it): which server and token a command
uses, and the server's refusals as lg's errors with their exit codes."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from lg.client.http import ApiClient, ServerRefused
from lg.client.settings import ServerSettings, resolve_server
from lg.errors import EnvironmentUnfit, ExitCode, InvalidInput
from lg.runs.tokens import Role
from tests.server.conftest import Project, Server


def test_option_beats_environment_beats_lg_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LG_TOKEN", "t0k3n")
    monkeypatch.setenv("LG_SERVER", "http://env.example:1/")
    assert resolve_server("https://opt.example", None, "http://yaml.example").url == "https://opt.example"
    assert resolve_server(None, None, "http://yaml.example").url == "http://env.example:1"
    monkeypatch.delenv("LG_SERVER")
    settings = resolve_server(None, None, "http://yaml.example/lg")
    assert settings is not None and settings.url == "http://yaml.example/lg" and settings.token == "t0k3n"  # noqa: S105
    assert "t0k3n" not in repr(settings)
    assert resolve_server(None, None, None) is None


def test_token_file_and_its_mistakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LG_TOKEN", raising=False)
    monkeypatch.delenv("LG_SERVER", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    settings = resolve_server("http://h:1", token_file, None)
    assert settings is not None and settings.token == "from-file"  # noqa: S105
    with pytest.raises(InvalidInput, match="LG_TOKEN"):
        resolve_server("http://h:1", None, None)
    with pytest.raises(InvalidInput, match="empty"):
        (tmp_path / "empty").write_text("\n")
        resolve_server("http://h:1", tmp_path / "empty", None)
    with pytest.raises(InvalidInput, match="no server"):
        resolve_server(None, token_file, None)
    with pytest.raises(InvalidInput, match="--server: 'ftp://h' is not a server URL"):
        resolve_server("ftp://h", token_file, None)


def test_calls_and_refusals_against_a_real_server(project: Project, serve: Callable[..., Server]) -> None:
    run_id = project.pause()
    viewer = project.token("watcher", Role.VIEWER)
    server = serve()
    client = ApiClient(ServerSettings(server.url, viewer))
    assert client.get_json("/api/v1/whoami")["role"] == "viewer"
    gates = client.get_json("/api/v1/gates")
    assert [gate["run"] for gate in gates] == [run_id]

    with pytest.raises(ServerRefused) as unknown:
        client.get_json("/api/v1/runs/ffffffff")
    assert unknown.value.status == 404 and unknown.value.exit_code == ExitCode.INVALID_INPUT
    assert server.url in str(unknown.value)

    gate = gates[0]
    with pytest.raises(ServerRefused) as no_role:
        client.post_json(f"/api/v1/runs/{run_id}/gates/{gate['gate']}/decisions",
                         {"verdict": "approve", "digest": gate["digest"]})
    assert no_role.value.status == 403 and no_role.value.code == "missing_role"

    with pytest.raises(ServerRefused) as bad_token:
        ApiClient(ServerSettings(server.url, "not-a-token")).get_json("/api/v1/gates")
    assert bad_token.value.status == 401


def test_an_unreachable_server_is_an_environment_error() -> None:
    with socket.socket() as closed:  # a port nobody listens on: bound, never listening
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        client = ApiClient(ServerSettings(f"http://127.0.0.1:{port}", "x"), timeout=5)
        with pytest.raises(EnvironmentUnfit, match="cannot reach lg serve"):
            client.get_json("/api/v1/gates")


def test_a_server_that_is_not_lg_serve_is_an_environment_error() -> None:
    """Something else answering at the URL (a proxy's HTML page): a clear error, no traceback."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the standard library's name
            body = b"<html>a login page</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page) as other:
        thread = threading.Thread(target=other.serve_forever, daemon=True)
        thread.start()
        try:
            client = ApiClient(ServerSettings(f"http://127.0.0.1:{other.server_address[1]}", "x"), timeout=10)
            with pytest.raises(EnvironmentUnfit, match="did not answer JSON"):
                client.get_json("/api/v1/gates")
        finally:
            other.shutdown()
            thread.join()
