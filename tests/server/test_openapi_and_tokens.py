"""The published OpenAPI document is what the app serves, and API tokens are stored hashed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest

from lg.server import openapi
from lg.server.api import ENDPOINTS
from tests.server.conftest import REPO, Project, Server
from tests.stores import StoreBackend, rows_of

PUBLISHED = REPO / "docs" / "openapi.json"


@pytest.fixture
def server_backend(store_backend: StoreBackend) -> StoreBackend:
    """Tokens and the server's start on both stores: `--state DIR` and `--state postgresql://...`."""
    return store_backend


def test_the_published_openapi_document_is_fresh() -> None:
    assert PUBLISHED.read_text() == openapi.text(), (
        "docs/openapi.json is stale: python -c \"from lg.server import openapi; "
        "open('docs/openapi.json','w').write(openapi.text())\"")


def test_every_api_route_is_documented_with_its_role() -> None:
    paths = openapi.document()["paths"]
    for endpoint in ENDPOINTS:
        operation = paths[endpoint.path.replace(":path", "")][endpoint.method.lower()]
        assert operation["operationId"] == endpoint.name
        assert operation["x-lg-permission"] == (endpoint.permission.value if endpoint.permission else None)
        assert {"401", "403"} <= set(operation["responses"])


def test_the_server_serves_the_published_document(project: Project, serve: Callable[..., Server]) -> None:
    project.pause()
    served = serve().request("GET", "/openapi.json")
    assert served.json == json.loads(PUBLISHED.read_text())


def lg(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    state = ["--state", project.state_arg] if args[0] in ("token", "serve") else []
    return subprocess.run([sys.executable, "-m", "lg", *args, *state], env=project.env,
                          capture_output=True, text=True, check=False, cwd=project.root)


def test_tokens_are_shown_once_stored_hashed_listed_and_revoked(project: Project) -> None:
    made = lg(project, "token", "create", "alice@example.com", "--role", "approver")
    assert made.returncode == 0, made.stderr
    text = made.stdout.strip()
    assert text.startswith("lgt_") and "shown only now" in made.stderr
    secret = text.rsplit("_", 1)[1]
    database = b"".join(path.read_bytes() for path in project.state.glob("lg.db*"))
    store = project.store()
    database += repr([rows_of(store, table) for table in ("tokens", "audit")]).encode()
    assert secret.encode() not in database
    listed = json.loads(lg(project, "token", "ls", "--json").stdout)
    assert [(t["name"], t["role"], t["revoked"]) for t in listed] == [("alice@example.com", "approver", None)]
    assert text not in lg(project, "token", "ls").stdout
    bad = lg(project, "token", "create", "x", "--role", "owner")
    assert bad.returncode == 2 and "owner" in bad.stderr
    bad_name = lg(project, "token", "create", "../../x y", "--role", "viewer")
    assert bad_name.returncode == 2 and "token name" in bad_name.stderr
    assert lg(project, "token", "revoke", listed[0]["id"]).returncode == 0
    assert json.loads(lg(project, "token", "ls", "--json").stdout)[0]["revoked"] is not None
    again = lg(project, "token", "revoke", listed[0]["id"])
    assert again.returncode == 2 and "no live token" in again.stderr
    kinds = [json.loads(line)["kind"] for line in lg(project, "audit", "export").stdout.splitlines()]
    assert kinds.count("token.created") == 1 and kinds.count("token.revoked") == 1


def test_lg_serve_refuses_a_taken_address_and_half_tls(project: Project, serve: Callable[..., Server]) -> None:
    project.pause()
    server = serve()
    taken = lg(project, "serve", "--listen", server.url.removeprefix("http://"))
    assert taken.returncode == 5 and "in use" in taken.stderr
    half = lg(project, "serve", "--tls-cert", str(project.root / "lg.yaml"))
    assert half.returncode == 2 and "go together" in half.stderr


def test_lg_help_and_serve_help_do_not_load_the_server_stack() -> None:
    code = ("import sys\nfrom lg.cli.main import run\n"
            "run(['--help']); run(['serve', '--help']); run(['token', '--help'])\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2', 'lg.server.app', 'psycopg')"
            " if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip().splitlines()[-1] == "[]"
