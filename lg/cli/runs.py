"""`lg runs`, `lg status RUN`, `lg logs RUN [STEP]`: read the durable run records."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lg.cli.output import emit_json, json_option, state_store
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
def runs(limit: int, as_json: bool) -> int:
    """List recent runs, newest first."""
    records = state_store().runs(limit)
    if as_json:
        emit_json([{**asdict(record), "abandoned": record.abandoned} for record in records])
        return ExitCode.OK
    if not records:
        click.echo("no runs yet")
    for record in records:
        click.echo(f"{record.id}  {record.shown_status:<11}  {record.pipeline:<24}  {_age(record.created)}")
    return ExitCode.OK


@click.command()
@click.argument("run_id")
@json_option
def status(run_id: str, as_json: bool) -> int:
    """Show a run and each of its steps: status, timings, accelerator, image, exit code."""
    from lg.agent.costs import Spend  # noqa: PLC0415
    from lg.runs.agent_sessions import AgentSessions  # noqa: PLC0415
    from lg.runs.gates import GateStore  # noqa: PLC0415

    store = state_store()
    record = store.run(run_id)
    steps = store.steps(record.id)
    gates = GateStore(store).gates(record.id)
    spent = {session.step_id: Spend.from_json(session.spend) for session in AgentSessions(store).of_run(record.id)}
    total = sum(spent.values(), Spend()) if spent else None
    if as_json:
        emit_json({"run": {**asdict(record), "abandoned": record.abandoned},
                   "steps": [asdict(step) for step in steps],
                   "gates": [{"gate": g.gate_id, "kind": g.kind, "status": g.status, "digest": g.digest,
                              "level": g.card.get("level"), "outcome": g.outcome} for g in gates],
                   "agent_spend": {"steps": {sid: spend.to_json() for sid, spend in spent.items()},
                                   "total": total.to_json() if total else None}})
        return ExitCode.OK
    duration = (record.finished or time.time()) - record.started if record.started else None
    click.echo(f"run {record.id}  {record.shown_status}  pipeline {record.pipeline}  {_seconds(duration)}")
    if record.error:
        click.echo(f"  error: {record.error}")
    if record.input_values:
        click.echo("  inputs: " + "  ".join(f"{name}={value!r}" for name, value in record.input_values.items()))
    for step in steps:
        digest = (step.image_digest or "")[:12] or "-"
        click.echo(
            f"  {step.step_id:<24} {step.status:<11} exit {step.exit_code if step.exit_code is not None else '-':<4}"
            f" {_seconds(step.duration):>8}  boot {_seconds(step.boot_seconds):>6}"
            f"  {step.accelerator or '-':<4} image {digest}  attempts {step.attempts}"
        )
        if step.detail:
            click.echo(f"      {step.detail}")
        if step.security:
            from lg.security.state import summary  # noqa: PLC0415

            click.echo(f"      security: {summary(step.security)}")
        if step.step_id in spent:
            click.echo(f"      agent: {spent[step.step_id].summary()}")
    if total is not None:
        click.echo(f"  agent spend, whole run: {total.summary()}")
    for gate in gates:
        click.echo(f"  gate {gate.gate_id:<24} {gate.status:<9} {gate.card.get('level', '-'):<7} "
                   f"digest {gate.digest[:12]}" + (f"  {gate.outcome}" if gate.outcome else ""))
    return ExitCode.OK


@click.command()
@click.argument("run_id")
@click.argument("step_id", required=False)
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing the output as it is written, until the step ends (with STEP) or the run stops.")
@json_option
def logs(run_id: str, step_id: str | None, follow: bool, as_json: bool) -> int:
    """Print the (secret-masked) output of a run's steps, or of one step."""
    store = state_store()
    record = store.run(run_id)
    if follow:
        if as_json:
            raise InvalidInput("--follow prints lines as they come; it does not go with --json")
        return _follow(store, record.id, step_id)
    steps = store.steps(record.id)
    if step_id is not None:
        steps = [step for step in steps if step.step_id == step_id]
        if not steps:
            raise InvalidInput(f"run {record.id} has no step {step_id!r}")
    chosen = [(step.step_id, Path(step.log_path)) for step in steps if step.log_path]
    if as_json:
        emit_json({sid: path.read_text(errors="replace") if path.is_file() else None for sid, path in chosen})
        return ExitCode.OK
    for sid, path in chosen:
        if len(chosen) > 1:
            click.echo(f"== {sid}")
        if path.is_file():
            click.echo(path.read_text(errors="replace"), nl=False)
    return ExitCode.OK


def _follow(store: RunStore, run_id: str, step_id: str | None) -> int:
    from lg.render.follow import follow  # noqa: PLC0415

    for sid, text in follow(store, run_id, step_id):
        if step_id is None:  # steps may run side by side: each line says whose it is
            text = "".join(f"[{sid}] {line}" for line in text.splitlines(keepends=True))
        click.echo(text, nl=False)
    return ExitCode.OK
