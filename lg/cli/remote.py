"""The options every client command shares: `--server URL` and `--token-file FILE` (lg.client.settings says
which wins), and the client they resolve to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from lg.client.http import ApiClient

F = TypeVar("F", bound=Callable[..., Any])


def server_options(function: F) -> F:
    """Add --server and --token-file to a command (its function takes `server` and `token_file`)."""
    function = click.option(
        "--token-file", type=click.Path(path_type=Path, dir_okay=False),
        help="A file holding the API token for --server (else LG_TOKEN).")(function)
    return click.option(
        "--server", metavar="URL",
        help="Talk to this lg serve instead of the local state store [env: LG_SERVER; lg.yaml: server].")(function)


def api_client(server: str | None, token_file: Path | None) -> ApiClient | None:
    """The client of the server the command was pointed at, or None for the local state store."""
    from lg.client.http import ApiClient  # noqa: PLC0415
    from lg.client.settings import resolve_server  # noqa: PLC0415
    from lg.config.project import load_project_config  # noqa: PLC0415

    config = load_project_config()
    where = str(config.source) if config.source else "lg.yaml"
    settings = resolve_server(server, token_file, config.server, where=where)
    return ApiClient(settings) if settings else None
