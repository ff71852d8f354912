"""`lg run PIPELINE`: every step in a fresh microVM; `--dry-run` prints the plan instead."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import click

from lg.cli.output import emit_json, json_option
from lg.errors import ExitCode, InvalidInput
from lg.model import Pipeline, ProjectConfig


@click.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(path_type=Path))
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False),
              help="Directory copied into each step's VM (default: the pipeline's directory).")
@click.option("--dry-run", is_flag=True, help="Print the plan (order, images, gates); boot nothing.")
@json_option
def run(pipeline_file: Path, workspace: Path | None, dry_run: bool, as_json: bool) -> int:
    """Run PIPELINE: each step in its own fresh microVM; changes come back only from steps that succeed."""
    from lg.config.pipeline import load_pipeline  # noqa: PLC0415
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.config.references import check_pipeline_references  # noqa: PLC0415
    from lg.runner.plan import build_plan, preflight, render_plan  # noqa: PLC0415

    config = load_project_config(pipeline_file.parent)
    pipeline = load_pipeline(pipeline_file, config)
    check_pipeline_references(pipeline)
    root = (workspace or pipeline.path.parent).resolve()
    if not root.is_dir():
        raise InvalidInput(f"--workspace {root}: not a directory")
    plan = build_plan(pipeline, config, root)
    if dry_run:
        if as_json:
            emit_json(plan)
        else:
            click.echo(render_plan(plan))
        return ExitCode.OK
    preflight(pipeline, config)
    return _execute(pipeline, config, root, as_json)


def _execute(pipeline: Pipeline, config: ProjectConfig, root: Path, as_json: bool) -> int:
    from lg.config.secrets import resolve_secrets  # noqa: PLC0415
    from lg.policy.load import load_policy  # noqa: PLC0415
    from lg.runner.console import echo_stdout  # noqa: PLC0415
    from lg.runner.engine import RunRequest, run_pipeline  # noqa: PLC0415
    from lg.runs.store import RunStore  # noqa: PLC0415

    policy = load_policy(pipeline.policy, config, pipeline.path.parent)
    secrets = resolve_secrets(pipeline, os.environ)
    for name in secrets.too_short_to_mask():
        click.echo(f"lg: warning: secret {name} is too short to be masked in output", err=True)
    store = RunStore(config.state_dir)
    echo = (lambda text: click.echo(text, err=True)) if as_json else echo_stdout
    outcome = run_pipeline(RunRequest(pipeline, config, root, secrets, echo, policy), store)
    if as_json:
        emit_json({"run": asdict(outcome.run), "steps": [asdict(s) for s in store.steps(outcome.run.id)]})
    return int(outcome.exit_code)
