"""`lg runs`, `lg status RUN`, `lg logs RUN [STEP]`: read the durable run records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lg.cli.output import emit_json, json_option, state_store
from lg.cli.remote import api_client, server_options
from lg.errors import ExitCode, InvalidInput

if TYPE_CHECKING:
    from lg.runs.store import RunStore


def _age(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    seconds = time.time() - timestamp
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _seconds(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else "-"


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@server_options
def runs(limit: int, as_json: bool, server: str | None, token_file: Path | None) -> int:
    """List recent runs, newest first."""
    client = api_client(server, token_file)
    if client is not None:
        from lg.client.runs import RemoteRuns  # noqa: PLC0415

        documents = RemoteRuns(client).runs(limit)
    else:
        from lg.runs.report import run_document  # noqa: PLC0415

        documents = [run_document(record) for record in state_store().runs(limit)]
    if as_json:
        emit_json(documents)
        return ExitCode.OK
    if not documents:
        click.echo("no runs yet")
    for run in documents:
        click.echo(f"{run['id']}  {_shown_status(run):<11}  {run['pipeline']:<24}  {_age(run['created'])}")
    return ExitCode.OK


def _shown_status(run: dict[str, Any]) -> str:
    """RunRecord.shown_status, from the record as `lg runs --json` prints it (judged where the store is)."""
    return f"abandoned (lg process {run['pid']} is gone)" if run["abandoned"] else str(run["status"])


@click.command()
@click.argument("run_id")
@json_option
@server_options
def status(run_id: str, as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Show a run and each of its steps: status, timings, accelerator, image, exit code."""
    client = api_client(server, token_file)
    if client is not None:
        from lg.client.runs import RemoteRuns  # noqa: PLC0415

        document = RemoteRuns(client).status(run_id)
    else:
        from lg.runs.report import status_document  # noqa: PLC0415

        store = state_store()
        document = status_document(store, store.run(run_id))
    if as_json:
        emit_json(document)
        return ExitCode.OK
    _print_status(document)
    return ExitCode.OK


def _print_status(document: dict[str, Any]) -> None:
    """`lg status` for people, from the document `lg status --json` prints (local or from a server)."""
    from lg.agent.costs import Spend  # noqa: PLC0415
    run = document["run"]
    started, finished = run["started"], run["finished"]
    duration = (finished or time.time()) - started if started else None
    click.echo(f"run {run['id']}  {_shown_status(run)}  pipeline {run['pipeline']}  {_seconds(duration)}")
    if run["error"]:
        click.echo(f"  error: {run['error']}")
    if run["input_values"]:
        click.echo("  inputs: " + "  ".join(f"{name}={value!r}" for name, value in run["input_values"].items()))
    for step in document["steps"]:
        digest = (step["image_digest"] or "")[:12] or "-"
        took = step["finished"] - step["started"] if step["started"] and step["finished"] else None
        exit_code = step["exit_code"] if step["exit_code"] is not None else "-"
        click.echo(
            f"  {step['step_id']:<24} {step['status']:<11} exit {exit_code:<4}"
            f" {_seconds(took):>8}  boot {_seconds(step['boot_seconds']):>6}"
            f"  {step['accelerator'] or '-':<4} image {digest}  attempts {step['attempts']}"
        )
        if step["detail"]:
            click.echo(f"      {step['detail']}")
        if step["security"]:
            from lg.security.state import summary  # noqa: PLC0415

            click.echo(f"      security: {summary(step['security'])}")
        spent = document.get("agent_spend", {}).get("steps", {}).get(step["step_id"])
        if spent is not None:
            click.echo(f"      agent: {Spend.from_json(spent).summary()}")
    total = document.get("agent_spend", {}).get("total")
    if total is not None:
        click.echo(f"  agent spend, whole run: {Spend.from_json(total).summary()}")
    for gate in document["gates"]:
        click.echo(f"  gate {gate['gate']:<24} {gate['status']:<9} {gate['level'] or '-':<7} "
                   f"digest {gate['digest'][:12]}" + (f"  {gate['outcome']}" if gate["outcome"] else ""))


@click.command()
@click.argument("run_id")
@click.argument("step_id", required=False)
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing the output as it is written, until the step ends (with STEP) or the run stops.")
@json_option
@server_options
def logs(run_id: str, step_id: str | None, follow: bool, as_json: bool, server: str | None,
         token_file: Path | None) -> int:
    """Print the (secret-masked) output of a run's steps, or of one step."""
    if follow and as_json:
        raise InvalidInput("--follow prints lines as they come; it does not go with --json")
    client = api_client(server, token_file)
    if client is not None:
        if follow:
            raise InvalidInput("--follow reads the local state store; with --server, print the logs without it")
        from lg.client.runs import RemoteRuns  # noqa: PLC0415

        texts = RemoteRuns(client).logs(run_id, step_id)
    else:
        store = state_store()
        record = store.run(run_id)
        if follow:
            return _follow(store, record.id, step_id)
        texts = _local_logs(store, record.id, step_id)
    if as_json:
        emit_json(texts)
        return ExitCode.OK
    for sid, text in texts.items():
        if len(texts) > 1:
            click.echo(f"== {sid}")
        if text is not None:
            click.echo(text, nl=False)
    return ExitCode.OK


def _local_logs(store: RunStore, run_id: str, step_id: str | None) -> dict[str, str | None]:
    steps = store.steps(run_id)
    if step_id is not None:
        steps = [step for step in steps if step.step_id == step_id]
        if not steps:
            raise InvalidInput(f"run {run_id} has no step {step_id!r}")
    chosen = [(step.step_id, Path(step.log_path)) for step in steps if step.log_path]
    return {sid: path.read_text(errors="replace") if path.is_file() else None for sid, path in chosen}


def _follow(store: RunStore, run_id: str, step_id: str | None) -> int:
    from lg.render.follow import follow  # noqa: PLC0415

    for sid, text in follow(store, run_id, step_id):
        if step_id is None:  # steps may run side by side: each line says whose it is
            text = "".join(f"[{sid}] {line}" for line in text.splitlines(keepends=True))
        click.echo(text, nl=False)
    return ExitCode.OK
