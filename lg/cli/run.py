"""`lg run PIPELINE`, `lg resume RUN`, `lg cancel RUN`: start, continue and stop runs."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import psutil

from lg.cli.output import (
    color_enabled,
    emit_json,
    input_option,
    input_values,
    json_option,
    state_store,
    webhook_courier,
)
from lg.cli.remote import api_client, server_options
from lg.cli.reports import Reports, junit_option, reports_for
from lg.errors import AwaitingApproval, EnvironmentUnfit, ExitCode, InvalidInput, LgError
from lg.model import Pipeline
from lg.runner import interrupts
from lg.runs.states import RunStatus
from lg.runs.store import RunRecord, RunStore

if TYPE_CHECKING:
    from lg.client.http import ApiClient
    from lg.inputs.run_inputs import RunInputs
    from lg.runner.engine import RunOutcome, RunRequest
    from lg.runs.ports import RunStoreLike

CANCEL_GRACE_SECONDS = 30.0
"""How long `lg cancel` gives a live run to destroy its VM and record the cancellation before killing it."""
KILL_WAIT_SECONDS = 10.0

wait_option = click.option(
    "--wait", is_flag=True,
    help="At an approval gate, wait for the decision instead of exiting with code 3.")


@click.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(path_type=Path))
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False),
              help="Directory copied into each step's VM (default: the pipeline's directory).")
@click.option("--dry-run", is_flag=True, help="Print the plan (order, images, gates); boot nothing.")
@input_option
@wait_option
@junit_option
@json_option
@server_options
def run(pipeline_file: Path, workspace: Path | None, dry_run: bool, input_pairs: tuple[str, ...], wait: bool,
        junit: Path | None, as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Run PIPELINE: each step in its own fresh microVM; changes come back only from steps that succeed.

    \b
    At an approval gate the run is paused durably: it exits with code 3 and prints how to
    decide (lg show / lg approve / lg reject) and to continue (lg resume); with --wait it
    waits for the decision and goes on. With --server the run is recorded on that lg serve
    (no local state directory): it prints the gate's page there, and any machine with a
    runner token can resume it (lg resume RUN --server URL).
    """
    from lg.inputs.run_inputs import load_run_inputs  # noqa: PLC0415
    from lg.runner.plan import build_plan, preflight, render_plan  # noqa: PLC0415

    given = input_values(input_pairs)
    if dry_run:
        inputs = load_run_inputs(pipeline_file, input_values=given)
        plan = build_plan(inputs, _workspace(workspace, inputs.pipeline))
        if as_json:
            emit_json(plan)
        else:
            click.echo(render_plan(plan))
        return ExitCode.OK
    client = api_client(server, token_file)
    interrupts.install()  # SIGINT and SIGTERM interrupt the run, whatever lg inherited (docs/approvals.md)
    inputs = load_run_inputs(pipeline_file, with_images=True, input_values=given)
    root = _workspace(workspace, inputs.pipeline)
    preflight(inputs)
    from lg.runner.engine import run_pipeline  # noqa: PLC0415

    if client is not None:
        return _run_on_server(client, inputs, root, wait, junit, as_json)
    store = RunStore(inputs.config.state_dir, inputs.config.state_url)
    store.require_intact_audit()
    reports = _reports(inputs, junit, as_json)
    request = _request(inputs, root, as_json, wait, reports)
    with webhook_courier(inputs.config):
        return _reported(store, as_json, lambda: run_pipeline(request, store), reports)


def _run_on_server(client: ApiClient, inputs: RunInputs, root: Path, wait: bool, junit: Path | None,
                   as_json: bool) -> int:
    from lg.cli.remote_run import local_inputs, remote_store  # noqa: PLC0415
    from lg.runner.engine import run_pipeline  # noqa: PLC0415

    with remote_store(client) as store:
        inputs = local_inputs(inputs, store)
        reports = _reports(inputs, junit, as_json, progress=False)
        reports.server_url = client.url  # a CI notice links the gate's page there
        request = _request(inputs, root, as_json, wait, reports)
        with webhook_courier(inputs.config):
            return _paused_on_server(client, store, reports, lambda: _reported(
                store, as_json, lambda: run_pipeline(request, store), reports))


def _paused_on_server(client: ApiClient, store: Any, reports: Reports, go: Callable[[], int]) -> int:
    from lg.cli.remote_run import announce_pages  # noqa: PLC0415

    try:
        return go()
    except AwaitingApproval:
        announce_pages(client, store, reports.run_id)
        raise


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--accept-changed", "accepted", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Go on although FILE (a risk policy, VM profile, seccomp or AppArmor file, image recipe or "
                   "lg.yaml) changed since the run started; recorded in the audit log. Repeat for each file.")
@click.option("--workspace", type=click.Path(path_type=Path, file_okay=False),
              help="With --server: the checkout to resume in (default: the current directory).")
@wait_option
@junit_option
@json_option
@server_options
def resume(run_id: str, accepted: tuple[Path, ...], workspace: Path | None, wait: bool, junit: Path | None,
           as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Continue RUN, paused at a gate, interrupted, or left behind by a killed lg.

    Steps that ended stay as they ended; a step that was running runs again in a fresh VM
    (nothing of it was applied); approved held effects are applied, rejected ones discarded.
    A run goes on with the files it started with: if any changed since, resume refuses
    (exit 2, naming each) unless --accept-changed names it.

    \b
    With --server, RUN is a run recorded on that lg serve, resumed in this checkout
    (--workspace): its approved held effects are downloaded and checked, and if a file they
    change is not what it was when the step ran, nothing is applied (exit 2, naming each).
    """
    from lg.approvals.decide import current_user  # noqa: PLC0415
    from lg.runner.engine import resume_run  # noqa: PLC0415
    from lg.runner.resume import bind_unchanged_inputs  # noqa: PLC0415

    client = api_client(server, token_file)
    interrupts.install()
    if client is not None:
        return _resume_on_server(client, run_id, accepted, (workspace or Path.cwd()).resolve(), wait, junit,
                                 as_json)
    if workspace is not None:
        raise InvalidInput("--workspace goes with --server (a local run resumes in the workspace it ran in)")
    store = state_store()
    store.require_intact_audit()
    record = store.run(run_id)
    inputs = bind_unchanged_inputs(store, record, accepted)
    reports = _reports(inputs, junit, as_json)
    reports.run_id = record.id
    request = _request(inputs, Path(record.workspace), as_json, wait, reports)
    record = store.claim(record.id, current_user())
    with webhook_courier(inputs.config):
        return _reported(store, as_json, lambda: resume_run(request, store, record), reports)


def _resume_on_server(client: ApiClient, run_id: str, accepted: tuple[Path, ...], workspace: Path, wait: bool,
                      junit: Path | None, as_json: bool) -> int:
    from lg.approvals.decide import current_user  # noqa: PLC0415
    from lg.cli.remote_run import (  # noqa: PLC0415
        fetch_approved_effects,
        fetch_artifacts,
        local_inputs,
        relocated,
        remote_store,
    )
    from lg.runner.engine import resume_run  # noqa: PLC0415
    from lg.runner.resume import bind_unchanged_inputs  # noqa: PLC0415

    with remote_store(client) as store:
        record = relocated(store.run(run_id), workspace)
        if record.finished_for_good:
            raise InvalidInput(f"run {record.id} already finished ({record.status}); there is nothing to resume")
        inputs = local_inputs(bind_unchanged_inputs(store, record, accepted), store)
        fetch_approved_effects(client, store, record.id, workspace)  # before the claim: a refusal changes nothing
        fetch_artifacts(client, store, record.id)
        reports = _reports(inputs, junit, as_json, progress=False)
        reports.run_id, reports.server_url = record.id, client.url
        request = _request(inputs, workspace, as_json, wait, reports)
        claimed = store.claim(record.id, current_user())
        with webhook_courier(inputs.config):
            return _paused_on_server(client, store, reports, lambda: _reported(
                store, as_json, lambda: resume_run(request, store, claimed), reports))


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", default="cancelled with lg cancel", show_default=True)
@server_options
def cancel(run_id: str, reason: str, server: str | None, token_file: Path | None) -> int:
    """Stop RUN for good: a live run is stopped at once (its VM destroyed), open gates are closed as
    cancelled, held effects are discarded. Nothing more of it runs or is applied; a finished run is left as it is.
    With --server, a run on that lg serve: a paused one is cancelled at once, a running one stops at its
    runner's next step."""
    from lg.approvals.decide import current_user  # noqa: PLC0415
    from lg.runner.engine import discard_held  # noqa: PLC0415

    client = api_client(server, token_file)
    if client is not None:
        from lg.cli.remote_run import cancel_on_server  # noqa: PLC0415

        cancel_on_server(client, run_id, reason)
        return ExitCode.OK

    store = state_store()
    store.require_intact_audit()
    record = store.run(run_id)
    if record.finished_for_good:
        raise InvalidInput(f"run {record.id} already finished ({record.status}); there is nothing to cancel")
    if record.process_alive and record.pid is not None and record.pid != os.getpid():
        # Recorded first: from now on the store refuses the run any progress, whatever becomes of the signal.
        store.request_cancel(record.id, reason, current_user())
        _stop(record.pid, record)
        record = store.run(record.id)
    if record.status is RunStatus.CANCELLED:
        click.echo(f"run {record.id}: cancelled (its lg process {record.pid} stopped it)")
        return ExitCode.OK
    if record.finished_for_good:  # it ended on its own before the request reached it: never relabelled
        raise InvalidInput(f"run {record.id} finished ({record.status}) before the cancellation reached it; "
                           "it is left as it ended")
    store.cancel(record.id, reason)
    discard_held(store, record.id, "run cancelled")
    click.echo(f"run {record.id}: cancelled")
    return ExitCode.OK


def _stop(pid: int, record: RunRecord) -> None:
    """Tell the lg process running the run to stop (SIGTERM, which lg handles as an interrupt whatever it
    inherited) and wait for it to cancel the run and exit. One that does not within CANCEL_GRACE_SECONDS is
    killed: its VM dies with it, and the cancellation is then finished here."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return
    except psutil.AccessDenied:
        raise EnvironmentUnfit(f"lg process {pid} running {record.id} belongs to another user: it is asked to "
                               "stop (recorded in the state store) and will at its next step",
                               fix=f"run `lg cancel {record.id}` as that user to stop it now") from None
    if _gone(process, CANCEL_GRACE_SECONDS):
        return
    click.echo(f"lg: lg process {pid} did not stop within {CANCEL_GRACE_SECONDS:.0f}s; killing it", err=True)
    with contextlib.suppress(psutil.NoSuchProcess):
        process.kill()
    if not _gone(process, KILL_WAIT_SECONDS):
        raise EnvironmentUnfit(f"lg process {pid} running {record.id} survived SIGKILL for "
                               f"{KILL_WAIT_SECONDS:.0f}s; the run is marked for cancellation",
                               fix=f"check the process (ps {pid}), then `lg cancel {record.id}` again")


def _gone(process: psutil.Process, seconds: float) -> bool:
    """Whether the process exits within `seconds`. Exited but not yet reaped by its parent (a zombie) counts
    as gone: it runs nothing any more, and psutil's own wait() would wait for the parent's reaping."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)  # polling another process's exit: there is no descriptor to wait on for a non-child
    return False


def _workspace(option: Path | None, pipeline: Pipeline) -> Path:
    root = (option or pipeline.path.parent).resolve()
    if not root.is_dir():
        raise InvalidInput(f"--workspace {root}: not a directory")
    return root


def _reports(inputs: RunInputs, junit: Path | None, as_json: bool, progress: bool = True) -> Reports:
    """`progress`: the live view, which reads the local state database (none for a run on a server)."""
    locations = {step.id: step.location for step in inputs.pipeline.steps}
    return reports_for(inputs.config.state_dir, junit, as_json, color_enabled() and progress, locations,
                       inputs.config.state_url)


def _request(inputs: RunInputs, root: Path, as_json: bool, wait: bool, reports: Reports) -> RunRequest:
    from lg.config.secrets import resolve_secrets  # noqa: PLC0415
    from lg.runner.console import echo_stdout  # noqa: PLC0415
    from lg.runner.engine import RunRequest  # noqa: PLC0415

    secrets = resolve_secrets(inputs.pipeline, os.environ)
    for name in secrets.too_short_to_mask():
        click.echo(f"lg: warning: secret {name} is too short to be masked in output", err=True)
    echo = reports.echo((lambda text: click.echo(text, err=True)) if as_json else echo_stdout)
    return RunRequest(inputs, root, secrets, echo, wait=wait, colour=color_enabled() and not as_json,
                      on_created=reports.created)


def _reported(store: RunStoreLike, as_json: bool, go: Callable[[], RunOutcome], reports: Reports) -> int:
    """Run `go`; with --json print the run's record whatever the outcome (paused, failed, rejected), so a CI
    job always gets something to parse; the error itself still goes to stderr with its exit code. The
    reports (--junit, GitHub's) are written whatever the outcome too."""
    try:
        with reports.live():
            outcome = go()
    except LgError:
        reports.finish(store, failed=True)
        if as_json:
            latest = store.run(reports.run_id) if reports.run_id else next(iter(store.runs(1)), None)
            if latest is not None:
                _emit_run(store, latest)
        raise
    reports.finish(store, failed=outcome.exit_code != ExitCode.OK)
    if as_json:
        _emit_run(store, outcome.run)
    return int(outcome.exit_code)


def _emit_run(store: RunStoreLike, record: RunRecord) -> None:
    gates = [{"gate": g.gate_id, "kind": g.kind, "status": g.status, "digest": g.digest, "outcome": g.outcome}
             for g in store.gate_store(time.time).gates(record.id)]
    emit_json({"run": asdict(store.run(record.id)), "steps": [asdict(s) for s in store.steps(record.id)],
               "gates": gates})
