"""`lg validate`, `lg render`, `lg schema`: understand a pipeline exactly, or say precisely what is wrong."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from lg.cli.output import emit_json, error_view, input_option, input_values, json_option
from lg.errors import ExitCode, InvalidInputs


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
def validate(files: tuple[Path, ...], as_json: bool) -> int:
    """Validate pipeline, risk policy, image recipe and lg.yaml files.

    Every error in every file is reported, each as FILE:LINE:COLUMN: KEY: MESSAGE. Exit 2 if any.
    """
    from lg.inputs.validate import validate_file  # noqa: PLC0415
    from lg.render.github import in_github_actions, input_annotations  # noqa: PLC0415

    reports = [validate_file(path) for path in files]
    if as_json:
        emit_json({
            "ok": all(report.ok for report in reports),
            "files": [
                {"file": str(r.path), "kind": r.kind, "ok": r.ok, "summary": r.summary,
                 "errors": [error_view(e) for e in r.errors]}
                for r in reports
            ],
        })
    else:
        github = in_github_actions()
        for report in reports:
            if report.ok:
                click.echo(f"ok: {report.path} ({report.kind}: {report.summary})")
            for error in report.errors:
                click.echo(str(error), err=True)
                if github:  # an error annotation at the file and line, in the pull request's diff
                    click.echo("\n".join(input_annotations(error)))
        failed = sum(1 for r in reports if not r.ok)
        if failed:
            count = sum(len(r.errors) for r in reports)
            click.echo(f"{count} error(s) in {failed} of {len(reports)} file(s)", err=True)
    return ExitCode.OK if all(report.ok for report in reports) else ExitCode.INVALID_INPUT


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@input_option
@json_option
def render(file: Path, input_pairs: tuple[str, ...], as_json: bool) -> int:
    """Print FILE fully expanded: matrix steps, defaults, and every template resolvable before the run,
    with the inputs it is given (--input NAME=VALUE, as `lg run` takes them).

    Templates that read step outputs (steps.ID.outputs.NAME) are resolved at run time and shown as written.
    """
    from lg.inputs.run_inputs import load_run_inputs  # noqa: PLC0415
    from lg.render.plan import pipeline_view, step_grades  # noqa: PLC0415

    inputs = load_run_inputs(file, input_values=input_values(input_pairs))
    view = pipeline_view(inputs.pipeline, step_grades(inputs.pipeline, inputs.policy, inputs.profiles))
    if as_json:
        emit_json(view)
    else:
        click.echo(yaml.safe_dump(view, sort_keys=False, allow_unicode=True, width=100), nl=False)
    return ExitCode.OK


@click.command()
@click.argument("name", required=False)
@click.option("--list", "list_names", is_flag=True, help="List the schema names.")
def schema(name: str | None, list_names: bool) -> int:
    """Print the JSON Schema for NAME (pipeline, lg, risk-policy, image-recipe).

    Point an editor at it with a first line such as
    `# yaml-language-server: $schema=../schemas/pipeline.schema.json`.
    """
    from lg.inputs.schemas import schema_names, schema_text  # noqa: PLC0415

    if list_names or name is None:
        click.echo("\n".join(schema_names()))
        return ExitCode.OK
    click.echo(schema_text(name), nl=False)
    return ExitCode.OK


__all__ = ["InvalidInputs", "render", "schema", "validate"]
