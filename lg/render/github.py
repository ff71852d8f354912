"""GitHub Actions workflow commands: annotations for invalid input and failed steps, a collapsible group per
step in the job log, and the job summary's table of steps.

The formats are GitHub's ("Workflow commands for GitHub Actions" in its documentation): `::error
file=F,line=L,col=C,title=T::message` on stdout, with `%`, CR and LF escaped in the message and also `:` and
`,` in property values; `::group::title` / `::endgroup::`; Markdown appended to the file named by
$GITHUB_STEP_SUMMARY. They are used only when $GITHUB_ACTIONS is `true`, as GitHub sets it on its runners.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lg.errors import InvalidInput, Location
from lg.runs.states import FAILED_STEPS, STOPPED_AT_GATE, StepStatus
from lg.runs.store import RunRecord, StepRecord

_STEP_PREFIX = re.compile(r"^\[([a-z0-9_-]+)\] ")


def in_github_actions(environ: Mapping[str, str] | None = None) -> bool:
    return (environ if environ is not None else os.environ).get("GITHUB_ACTIONS") == "true"


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(kind: str, message: str, location: Location | None = None, title: str | None = None) -> str:
    """`::error file=...,line=...::message` (kind: error, warning or notice)."""
    properties = []
    if location is not None and location.path is not None:
        properties.append(f"file={escape_property(_repo_path(location.path))}")
        if location.line is not None:
            properties.append(f"line={location.line}")
            if location.column is not None:
                properties.append(f"col={location.column}")
    if title:
        properties.append(f"title={escape_property(title)}")
    head = f"::{kind} {','.join(properties)}" if properties else f"::{kind}"
    return f"{head}::{escape_data(message)}"


def input_annotations(error: InvalidInput) -> list[str]:
    """One annotation per problem of an invalid input (every error of `lg validate`'s report)."""
    errors: Iterable[InvalidInput] = getattr(error, "errors", None) or [error]
    return [annotation("error", _message(e), e.location, title=_title(e)) for e in errors]


def step_annotations(steps: Sequence[StepRecord], locations: Mapping[str, Location]) -> list[str]:
    """An error annotation for each step that failed, at the step in the pipeline file."""
    lines = []
    for step in steps:
        if step.status in FAILED_STEPS or step.status in STOPPED_AT_GATE:
            exit_code = f" (exit {step.exit_code})" if step.exit_code is not None else ""
            message = f"step {step.step_id} {step.status.value}{exit_code}: {step.detail or ''}".rstrip(": ")
            lines.append(annotation("error", message, locations.get(step.step_id), title=f"lg: {step.step_id}"))
    return lines


class Groups:
    """Wraps a line printer so each step's consecutive lines fold into a `::group::` of the job log. Lines
    of steps running side by side are interleaved; each change of step closes one group and opens the next
    (GitHub's groups do not nest)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.open: str | None = None

    def __call__(self, text: str) -> None:
        match = _STEP_PREFIX.match(text)
        step = match.group(1) if match else None
        if step != self.open:
            self.close()
            if step is not None:
                self.echo(f"::group::{escape_data(step)}")
                self.open = step
        self.echo(text)

    def close(self) -> None:
        if self.open is not None:
            self.echo("::endgroup::")
            self.open = None


def summary_markdown(run: RunRecord, steps: Sequence[StepRecord]) -> str:
    """The job summary: the run's outcome and a table of its steps."""
    icon = {StepStatus.SUCCEEDED: "✅", StepStatus.FAILED: "❌", StepStatus.TIMED_OUT: "⏱️", StepStatus.SKIPPED: "⏭️"}
    lines = [f"### lg run `{run.id}`: {run.pipeline} — {run.status.value}", ""]
    if run.error:
        lines += [f"> {_cell(run.error)}", ""]
    if run.input_values:
        lines += ["Inputs: " + ", ".join(f"`{k}={_cell(str(v))}`" for k, v in run.input_values.items()), ""]
    lines += ["| step | status | time | attempts | detail |", "|---|---|---:|---:|---|"]
    for step in steps:
        status = f"{icon.get(step.status, '')} {step.status.value}".strip()
        duration = f"{step.duration:.1f}s" if step.duration is not None else "-"
        lines.append(f"| `{step.step_id}` | {status} | {duration} | {step.attempts} | {_cell(step.detail or '')} |")
    return "\n".join(lines) + "\n\n"


def append_summary(path: Path, run: RunRecord, steps: Sequence[StepRecord]) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(summary_markdown(run, steps))


def _cell(text: str) -> str:
    """Markdown table cells: one line, no column separator, bounded."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= 300 else flat[:297] + "..."


def _message(error: InvalidInput) -> str:
    return f"{error.location.key_path}: {error.message}" if error.location and error.location.key_path \
        else error.message


def _title(error: InvalidInput) -> str:
    return "lg: invalid input" if error.location is None or error.location.path is None \
        else f"lg: {error.location.path.name}"


def _repo_path(path: Path) -> str:
    """Annotations name files relative to the repository (the job's workspace) when they are inside it."""
    workspace = os.environ.get("GITHUB_WORKSPACE")
    if workspace:
        try:
            return path.resolve().relative_to(Path(workspace).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)



@dataclass(frozen=True)
class GateNotice:
    """An open gate as a CI job reports it: what to run to decide it and go on, and where to look."""

    run_id: str
    gate_id: str
    step_id: str
    level: str
    digest: str
    card_text: str  # the card as `lg show` prints it without colour
    server_url: str | None = None  # the lg serve holding the run, when it was recorded on one

    @property
    def page_url(self) -> str | None:
        return f"{self.server_url}/runs/{self.run_id}/gates/{self.gate_id}" if self.server_url else None

    def commands(self) -> tuple[str, str]:
        """The exact approve and resume commands (with the server, when the run lives on one)."""
        server = f" --server {self.server_url}" if self.server_url else ""
        return (f"lg approve {self.run_id} {self.gate_id} --digest {self.digest[:16]}{server}",
                f"lg resume {self.run_id}{server}")


_LEVEL_ICON = {"green": "🟢", "yellow": "🟡", "orange": "🟠", "red": "🔴"}


def gate_markdown(gate: GateNotice) -> str:
    """The job summary's section for an open gate: the card in full and the commands that decide it."""
    approve, resume = gate.commands()
    icon = _LEVEL_ICON.get(gate.level, "⚪")
    lines = [f"### {icon} Awaiting approval: gate `{gate.gate_id}` of run `{gate.run_id}` ({gate.level})", ""]
    if gate.page_url:
        lines += [f"Review it on the approval page: {gate.page_url}", ""]
    fence = "````" if "```" in gate.card_text else "```"  # a card quoting a fence must not close ours
    lines += ["<details open><summary>Diff card</summary>", "", f"{fence}text", gate.card_text, fence, "",
              "</details>", "", "Approve (bound to the digest you reviewed), then resume the run:", "", "```sh",
              approve, resume, "```", ""]
    return "\n".join(lines) + "\n"


def gate_annotation(gate: GateNotice) -> str:
    """A notice annotation pointing at the gate's page (or at the commands when there is no server)."""
    approve, _ = gate.commands()
    where = f"review and decide at {gate.page_url}" if gate.page_url else f"decide with: {approve}"
    return annotation("notice", f"run {gate.run_id} waits at gate {gate.gate_id} (step {gate.step_id}, "
                                f"{gate.level}); {where}", title="lg: awaiting approval")


def append_gate_summaries(path: Path, gates: Sequence[GateNotice]) -> None:
    with path.open("a", encoding="utf-8") as out:
        for gate in gates:
            out.write(gate_markdown(gate))
