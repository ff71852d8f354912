"""The `lg` entry point: a lazy command group and the one place where errors become exit codes."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time
import traceback
from typing import Any

import click

from lg import __version__
from lg.errors import ExitCode, InvalidInput, LgError

# Commands are imported only when invoked, so `lg --help` and `lg validate` never load VM drivers or LLM code.
COMMANDS: dict[str, str] = {
    "validate": "lg.cli.validate:validate",
    "render": "lg.cli.validate:render",
    "schema": "lg.cli.validate:schema",
    "image": "lg.cli.image:image",
    "doctor": "lg.cli.doctor:doctor",
    "init": "lg.cli.init:init",
    "policy": "lg.cli.policy:policy",
    "run": "lg.cli.run:run",
    "runs": "lg.cli.runs:runs",
    "status": "lg.cli.runs:status",
    "logs": "lg.cli.runs:logs",
    "audit": "lg.cli.audit:audit",
    "profile": "lg.cli.profile:profile",
    "pool": "lg.cli.pool:pool",
    "resume": "lg.cli.run:resume",
    "cancel": "lg.cli.run:cancel",
    "pending": "lg.cli.approvals:pending",
    "show": "lg.cli.approvals:show",
    "approve": "lg.cli.approvals:approve",
    "reject": "lg.cli.approvals:reject",
    "artifacts": "lg.cli.artifacts:artifacts",
    "cache": "lg.cli.artifacts:cache",
    "webhooks": "lg.cli.webhooks:webhooks",
    "serve": "lg.cli.serve:serve",
    "token": "lg.cli.serve:token",
    "review": "lg.cli.review:review",
}

SHORT_HELP: dict[str, str] = {
    "validate": "Check pipeline, policy and project files; report every error at once.",
    "render": "Print a pipeline fully expanded (matrix, templates, defaults).",
    "schema": "Print the JSON Schema of a file kind (for editors and CI).",
    "image": "Build, list and remove guest images.",
    "doctor": "Report what this host can do, with a fix for each problem.",
    "init": "Start a project: lg.yaml, an example pipeline, copies of the profiles.",
    "policy": "Test risk policies and explain their decisions.",
    "run": "Run a pipeline, each step in a fresh microVM.",
    "runs": "List recent runs.",
    "status": "Show a run and its steps.",
    "logs": "Print the output of a run's steps.",
    "audit": "Verify or export the tamper-evident audit log.",
    "profile": "Check VM profiles and compile their seccomp and AppArmor parts.",
    "pool": "Serve the shared warm VM pool; show its VMs, templates and metrics.",
    "resume": "Continue a run paused at a gate, interrupted, or left by a killed lg.",
    "cancel": "Stop a run for good; discard its held effects.",
    "pending": "List open approval gates.",
    "show": "Print a gate's diff card: what approving it would let through.",
    "approve": "Approve a gate (optionally SSH-signed).",
    "reject": "Reject a gate: its step does not run or its effects are discarded.",
    "artifacts": "List a run's kept artifacts, or copy them out.",
    "cache": "List, remove and prune the step cache.",
    "webhooks": "Deliver gate events the project's webhooks have not received yet.",
    "serve": "Serve the HTTP API, the approval page and metrics over the state store.",
    "token": "Create, list and revoke the API tokens of lg serve.",
    "review": "Review pending gates interactively (cards, diffs, keys to decide).",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import every command module: use the static summaries.
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lg")
def cli() -> None:
    """LuminaGuard: run untrusted pipeline steps in throwaway microVMs, gated by risk policies.

    \b
    Exit codes: 0 ok, 1 a step or check failed, 2 invalid input, 3 awaiting approval,
    4 rejected or expired, 5 environment cannot do it, 70 internal error, 130 interrupted.
    """


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="lg", standalone_mode=False)
        return int(result) if isinstance(result, int) else ExitCode.OK
    except LgError as error:
        click.echo(f"lg: {_error_label(error)}{error}", err=True)
        _annotate(error)
        return int(error.exit_code)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as error:
        error.show()
        return ExitCode.INVALID_INPUT if isinstance(error, click.UsageError) else int(error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("lg: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # `lg render p.yaml | head` closing the pipe is not an error; silence the flush at exit too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except Exception:  # a bug: keep the evidence, point at it, never dump it on the user
        path = _write_crash_report(argv)
        click.echo(f"lg: internal error (a bug in lg). The traceback is in {path}; "
                   "please attach it to a bug report.", err=True)
        return ExitCode.INTERNAL


def _annotate(error: LgError) -> None:
    """In GitHub Actions, an invalid input is also an error annotation at its file and line."""
    if isinstance(error, InvalidInput) and os.environ.get("GITHUB_ACTIONS") == "true":
        from lg.render.github import input_annotations  # noqa: PLC0415

        for line in input_annotations(error):
            click.echo(line)


def _error_label(error: LgError) -> str:
    return "" if error.exit_code in (ExitCode.INVALID_INPUT, ExitCode.AWAITING_APPROVAL) else "error: "


def _write_crash_report(argv: list[str] | None) -> str:
    text = (
        f"lg {__version__} crashed at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n"
        f"argv: {argv if argv is not None else sys.argv}\n\n{traceback.format_exc()}"
    )
    handle, path = tempfile.mkstemp(prefix="lg-crash-", suffix=".log")
    with os.fdopen(handle, "w") as report:
        report.write(text)
    return path


def command_target(name: str) -> Any:
    """The click command registered under `name` (used by tests and the docs generator)."""
    return LazyGroup().get_command(click.Context(cli), name)


if __name__ == "__main__":
    main()
