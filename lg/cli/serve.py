"""`lg serve` (the HTTP API, approval page and metrics over the state store) and `lg token` (its API tokens)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lg.cli.output import emit_json, json_option
from lg.errors import ExitCode, InvalidInput

if TYPE_CHECKING:
    from lg.runs.store import RunStore

state_option = click.option(
    "--state", "state", metavar="DIR|postgresql://...",
    help="The state directory, or a PostgreSQL URL (default: state: or state_dir of lg.yaml, LG_STATE_URL or "
         "LG_STATE_DIR). With a URL, local files (step logs, held effects) stay in the project's state_dir.")


def open_store(state: str | None) -> RunStore:
    from lg.cli.output import state_store  # noqa: PLC0415
    from lg.runs.postgres import is_url  # noqa: PLC0415
    from lg.runs.store import RunStore  # noqa: PLC0415

    if state is None:
        return state_store()
    if is_url(state):
        from lg.config.project import load_project_config  # noqa: PLC0415

        return RunStore(load_project_config().state_dir, state)
    if "://" in state or state.lower().startswith(("postgresql:", "postgres:")):
        shown = f"{state.split('://', 1)[0]}://..." if "://" in state else f"{state.split(':', 1)[0]}:..."
        raise InvalidInput(f"--state {shown}: a state URL is postgresql://...; or give a directory")
    return RunStore(Path(state))


@click.command()
@click.option("--listen", default="127.0.0.1:8570", show_default=True, metavar="HOST:PORT",
              help="Address to listen on (port 0: any free port, printed at start).")
@state_option
@click.option("--blobs", type=click.Path(path_type=Path, file_okay=False), metavar="DIR",
              help="The blob store: held effects, logs and artifacts of runs recorded through the server "
                   "(default: the state directory's blobs/).")
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Serve HTTPS with this certificate (PEM); needs --tls-key.")
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="The private key of --tls-cert (PEM).")
def serve(listen: str, state: str | None, blobs: Path | None, tls_cert: Path | None, tls_key: Path | None) -> int:
    """Serve the HTTP API (/api/v1), the approval page (/), /openapi.json, /healthz and /metrics.

    \b
    Callers authenticate with API tokens (lg token create NAME --role ROLE). Without TLS, listen
    on loopback only or behind a TLS-terminating proxy: tokens travel in the clear otherwise.
    """
    from lg.server.serve import Listen, Tls  # noqa: PLC0415
    from lg.server.serve import serve as run_server  # noqa: PLC0415
    from lg.server.state import ServerConfig  # noqa: PLC0415

    address = Listen.parse(listen)
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    store = open_store(state)
    store.close()
    tls = Tls(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    run_server(ServerConfig(store.state_dir, blobs, secure_cookies=tls is not None, state_url=store.url),
               address, tls)
    return ExitCode.OK


@click.group()
def token() -> None:
    """API tokens of lg serve: create (shown once), list, revoke."""


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["viewer", "approver", "runner", "admin"]),
              help="viewer reads; approver also decides gates; runner also claims runs and downloads held "
                   "effects; admin does everything.")
@state_option
@json_option
def create(name: str, role: str, state: str | None, as_json: bool) -> int:
    """Make a token for NAME (the identity its decisions are recorded under) and print it, once."""
    from lg.approvals.decide import current_user  # noqa: PLC0415
    from lg.runs.tokens import TokenStore, parse_role  # noqa: PLC0415

    store = open_store(state)
    store.require_intact_audit()
    made, text = TokenStore(store).create(name, parse_role(role), current_user())
    if as_json:
        emit_json({"id": made.id, "name": made.name, "role": made.role.value, "token": text})
    else:
        click.echo(text)
        click.echo(f"token {made.id} for {made.name} ({made.role.value}); it is shown only now: keep it "
                   "secret (e.g. in LG_TOKEN)", err=True)
    return ExitCode.OK


@token.command("ls")
@state_option
@json_option
def list_tokens(state: str | None, as_json: bool) -> int:
    """List tokens (never their secrets)."""
    from lg.runs.tokens import TokenStore  # noqa: PLC0415

    tokens = TokenStore(open_store(state)).tokens()
    rows: list[dict[str, Any]] = [{"id": t.id, "name": t.name, "role": t.role.value, "created": t.created,
                                   "created_by": t.created_by, "revoked": t.revoked} for t in tokens]
    if as_json:
        emit_json(rows)
        return ExitCode.OK
    if not rows:
        click.echo("no tokens (lg token create NAME --role ROLE)")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(row["created"]))
        revoked = "  revoked" if row["revoked"] else ""
        click.echo(f"{row['id']}  {row['name']:<32} {row['role']:<9} created {when} by {row['created_by']}{revoked}")
    return ExitCode.OK


@token.command("revoke")
@click.argument("which", metavar="ID|NAME")
@state_option
def revoke(which: str, state: str | None) -> int:
    """Revoke a token by id, or every live token of NAME: at once, for the API and the page's sessions."""
    from lg.approvals.decide import current_user  # noqa: PLC0415
    from lg.runs.tokens import TokenStore  # noqa: PLC0415

    store = open_store(state)
    store.require_intact_audit()
    for revoked in TokenStore(store).revoke(which, current_user()):
        click.echo(f"revoked token {revoked.id} ({revoked.name}, {revoked.role.value})")
    return ExitCode.OK
