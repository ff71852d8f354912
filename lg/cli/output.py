"""Small helpers every command uses to print results: JSON for machines, text for people."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from lg.errors import InvalidInput

if TYPE_CHECKING:
    from lg.model import ProjectConfig
    from lg.runs.store import RunStore

F = TypeVar("F", bound=Callable[..., Any])


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(function)


def input_option(function: F) -> F:
    return click.option(
        "--input", "input_pairs", multiple=True, metavar="NAME=VALUE",
        help="A value for the pipeline's input NAME (declared under `inputs:`), read as its type; repeat "
             "for each. A required input missing, an unknown NAME or a value of the wrong type: exit 2.")(function)


def input_values(pairs: tuple[str, ...]) -> dict[str, str]:
    from lg.config.inputs import parse_assignments  # noqa: PLC0415

    return parse_assignments(pairs)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def error_view(error: InvalidInput) -> dict[str, Any]:
    location = error.location
    return {
        "file": str(location.path) if location and location.path else None,
        "line": location.line if location else None,
        "column": location.column if location else None,
        "key": location.key_path if location else "",
        "message": error.message,
        "text": str(error),
    }


def color_enabled() -> bool:
    """Colour only on a terminal and only without NO_COLOR (https://no-color.org)."""
    import os  # noqa: PLC0415

    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def state_store() -> RunStore:
    """The run records of the project around the working directory (lg.yaml), or of the user."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.runs.store import RunStore  # noqa: PLC0415

    config = load_project_config()
    return RunStore(config.state_dir, config.state_url)


def webhook_courier(config: ProjectConfig) -> contextlib.AbstractContextManager[object]:
    """Around a command that opens or decides gates: the project's webhooks hear of each as it happens."""
    if not config.webhooks:
        return contextlib.nullcontext()
    from lg.notify.webhooks import Courier  # noqa: PLC0415

    return Courier(config.state_dir, config.webhooks, lambda text: click.echo(f"lg: {text}", err=True),
                   state_url=config.state_url)
