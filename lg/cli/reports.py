"""What `lg run` and `lg resume` report besides their own output: a JUnit file (--junit), GitHub workflow
commands and the job summary (when $GITHUB_ACTIONS is true), and the live progress view on a terminal.

All of it is built from the run's records in the state store, after the run (or, for the progress view, by
polling them while it goes), so it says what `lg status` says, whatever way the run ended.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lg.errors import EnvironmentUnfit, InvalidInput, Location
from lg.runs.ports import RunStoreLike
from lg.runs.store import RunRecord, StepRecord

if TYPE_CHECKING:
    from lg.render.github import GateNotice

junit_option = click.option(
    "--junit", "junit", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
    help="Write a JUnit XML report to FILE when the run stops (finished, failed or paused): a testcase per "
         "step with its output and why it failed; replaced atomically.")


@dataclass
class Reports:
    state_dir: Path
    junit: Path | None = None
    github: bool = False
    progress: bool = False
    summary: Path | None = None  # $GITHUB_STEP_SUMMARY
    outputs: Path | None = None  # $GITHUB_OUTPUT: the step's outputs (run-id, run-status) for later jobs
    locations: dict[str, Location] = field(default_factory=dict)  # where each step is in the pipeline file
    run_id: str | None = None
    server_url: str | None = None  # the lg serve the run is recorded on (its gates' pages are there)
    _groups: Callable[[str], None] | None = None
    _live: object | None = None
    state_url: str | None = None  # the PostgreSQL store, if the run's records are there

    def echo(self, base: Callable[[str], None]) -> Callable[[str], None]:
        """The line printer of the run: in GitHub Actions, each step's lines fold into a group."""
        if not self.github:
            return base
        from lg.render.github import Groups  # noqa: PLC0415

        groups = Groups(base)
        self._groups = groups
        return groups

    def created(self, record: RunRecord) -> None:
        self.run_id = record.id
        if self._live is not None:
            self._live.run_id = record.id  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def live(self) -> Iterator[None]:
        if not self.progress:
            yield
            return
        from lg.render.progress import LiveProgress  # noqa: PLC0415

        with LiveProgress(self.state_dir, self.run_id, self.state_url) as view:
            self._live = view
            try:
                yield
            finally:
                self._live = None

    def finish(self, store: RunStoreLike, failed: bool) -> None:
        """Write what the run's records say. A report that cannot be written fails a run that did not fail
        already (a CI job that asked for it would miss it); otherwise it is said on stderr."""
        close = getattr(self._groups, "close", None)
        if close is not None:
            close()
        if self.run_id is None:
            return
        run, steps = store.run(self.run_id), store.steps(self.run_id)
        problems = []
        if self.junit is not None:
            from lg.render.junit import write_junit  # noqa: PLC0415

            try:
                write_junit(self.junit, run, steps)
            except OSError as error:
                problems.append(f"cannot write the JUnit report {self.junit}: {error.strerror or error}")
        if self.github:
            problems += self._github(store, run, steps)
        for problem in problems:
            click.echo(f"lg: error: {problem}", err=True)
        if problems and not failed:
            raise EnvironmentUnfit(problems[0])

    def _github(self, store: RunStoreLike, run: RunRecord, steps: list[StepRecord]) -> list[str]:
        """Annotations on stdout; the summary (the steps, then each open gate with the commands that decide it)
        and the step's outputs (run-id, run-status) appended to GitHub's files. Returns what could not be written."""
        from lg.render.github import (  # noqa: PLC0415
            append_gate_summaries,
            append_summary,
            gate_annotation,
            step_annotations,
        )

        for line in step_annotations(steps, self.locations):
            click.echo(line)
        gates = self._open_gates(store)
        for gate in gates:
            click.echo(gate_annotation(gate))
        problems = []
        if self.summary is not None:
            try:
                append_summary(self.summary, run, steps)
                append_gate_summaries(self.summary, gates)
            except OSError as error:
                problems.append(f"cannot write the job summary {self.summary}: {error.strerror or error}")
        if self.outputs is not None:
            try:
                with self.outputs.open("a", encoding="utf-8") as out:
                    out.write(f"run-id={run.id}\nrun-status={run.status.value}\n")
            except OSError as error:
                problems.append(f"cannot write the step outputs {self.outputs}: {error.strerror or error}")
        return problems

    def _open_gates(self, store: RunStoreLike) -> list[GateNotice]:
        """The run's open gates, each with its card as `lg show` prints it (without colour, wrapped at 100)."""
        from lg.approvals.card import render  # noqa: PLC0415
        from lg.render.github import GateNotice  # noqa: PLC0415

        assert self.run_id is not None  # noqa: S101 - finish() checked it
        return [GateNotice(gate.run_id, gate.gate_id, gate.step_id, str(gate.card.get("level", "red")), gate.digest,
                           render(gate.card, digest=gate.digest, status=gate.status, outcome=gate.outcome,
                                  colour=False, width=100), self.server_url)
                for gate in store.gate_store(time.time).gates(self.run_id) if gate.is_open]


def reports_for(state_dir: Path, junit: Path | None, as_json: bool, colour: bool,
                locations: dict[str, Location], state_url: str | None = None) -> Reports:
    from lg.render.github import in_github_actions  # noqa: PLC0415

    if junit is not None:  # its directory is made if missing (as pytest's --junitxml does); a file in the way is not
        for parent in junit.resolve().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InvalidInput(f"--junit {junit}: {parent} is not a directory")
                break
    github = in_github_actions()
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if github else None
    outputs = os.environ.get("GITHUB_OUTPUT") if github else None
    return Reports(state_dir, junit, github, progress=colour and not as_json and not github,
                   summary=Path(summary) if summary else None, outputs=Path(outputs) if outputs else None,
                   locations=locations, state_url=state_url)
