"""`lg webhooks deliver`: send the gate events the project's webhooks have not received yet."""

from __future__ import annotations

import click

from lg.config.project import load_project_config
from lg.errors import ExitCode, InvalidInput


@click.group()
def webhooks() -> None:
    """Webhooks on gate events (lg.yaml `webhooks:`, docs/approvals.md)."""


@webhooks.command("deliver")
@click.option("--within", "budget", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to spend at most, retries included.")
def deliver_command(budget: float) -> int:
    """Deliver what is waiting (after a receiver was down, or its key was missing). Exit 1 if some still waits."""
    from lg.notify.webhooks import deliver  # noqa: PLC0415

    config = load_project_config()
    if not config.webhooks:
        raise InvalidInput("lg webhooks deliver: lg.yaml configures no webhooks")
    result = deliver(config.state_dir, config.webhooks, budget, lambda text: click.echo(f"lg: {text}", err=True),
                     state_url=config.state_url)
    click.echo(f"delivered {result.delivered} event(s); {result.dead} given up"
               + ("; some still wait" if result.pending else ""))
    return ExitCode.FAILED if result.pending else ExitCode.OK
