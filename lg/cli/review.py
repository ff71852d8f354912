"""`lg review [RUN]`: decide pending gates in an interactive terminal reviewer (lg.review, Textual, lazily
imported so that `lg --help` stays fast)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lg.cli.approvals import key_option
from lg.cli.output import state_store
from lg.cli.remote import api_client, server_options
from lg.errors import EnvironmentUnfit, ExitCode

if TYPE_CHECKING:
    from lg.review.source import GateSource


@click.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@key_option
@server_options
def review(run_id: str | None, key: Path | None, server: str | None, token_file: Path | None) -> int:
    """Review pending gates interactively: each gate's card (risk, rules, command, relaxations, diffs),
    scrolled and searched with the keyboard; approve, reject or sign without leaving it.

    \b
    Only the gates of RUN when it is given. With --server (or LG_SERVER, lg.yaml server:) the gates are
    those of that lg serve, decided with the token's identity. Needs a terminal of at least 80x24; elsewhere
    (a pipe, a CI job) use `lg pending`, `lg show` and `lg approve` / `lg reject` (exit 5 says so).
    """
    if not interactive():
        raise EnvironmentUnfit("lg review is interactive and needs a terminal (stdin and stdout are not both one)",
                               fix="use `lg pending`, `lg show RUN` and `lg approve` / `lg reject` instead")
    source = _source(server, token_file)
    if not source.pending(run_id):
        click.echo(f"run {run_id} has no open gate" if run_id else "no open gates: nothing to review")
        return ExitCode.OK
    from lg.review.app import ReviewApp  # noqa: PLC0415 - Textual is heavy: loaded only for this command

    app = ReviewApp(source, run_id=run_id, key=key)
    app.run()
    if app.return_code:  # Textual caught a bug and has printed it; exit as lg does for one
        return ExitCode.INTERNAL
    for decided_run, gate_id, verdict in app.decided:
        click.echo(f"{verdict} recorded for gate {gate_id} of run {decided_run}")
    return ExitCode.OK


def _source(server: str | None, token_file: Path | None) -> GateSource:
    """The gates of the server the command was pointed at, else of the local state store."""
    client = api_client(server, token_file)
    if client is not None:
        from lg.client.gates import RemoteGates  # noqa: PLC0415
        from lg.review.http_source import HttpGateSource  # noqa: PLC0415

        return HttpGateSource(RemoteGates(client))
    from lg.review.source import LocalGateSource  # noqa: PLC0415

    return LocalGateSource(state_store())


def interactive() -> bool:
    """Keys come from a terminal and the screen goes to one."""
    return sys.stdin.isatty() and sys.stdout.isatty()
