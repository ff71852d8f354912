"""`lg run/resume/cancel --server`: a run recorded on `lg serve` instead of a local state directory.

The runner is the same engine; its store is the server's (lg.client.remote_store). Everything local lives in
a scratch directory removed at exit, so the machine that paused a run can vanish and another, in a fresh
checkout, resumes it: it downloads the approved held effects (digests checked), refuses when the workspace's
files are not the ones the effects were computed against (naming each; nothing applied), claims the run and
goes on.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import click

from lg.client.http import ApiClient
from lg.client.remote_store import RemoteRunStore
from lg.errors import InvalidInput
from lg.inputs.run_inputs import RunInputs
from lg.runner.artifacts import Artifact, step_artifacts_dir, write_record
from lg.runner.effects import effects_dir, host_sha256
from lg.runs.gates import Gate
from lg.runs.states import GateStatus, RunStatus, StepStatus
from lg.runs.store import RunRecord, StepRecord


@contextmanager
def remote_store(client: ApiClient) -> Iterator[RemoteRunStore]:
    """The server's store, with a scratch directory for what a run keeps locally meanwhile (removed at exit)."""
    scratch = Path(tempfile.mkdtemp(prefix="lg-remote-"))
    try:
        store = RemoteRunStore(client, scratch, effects_dir)
        store.require_intact_audit()
        yield store
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def local_inputs(inputs: RunInputs, store: RemoteRunStore) -> RunInputs:
    """The run's inputs with the scratch directory as state directory: the step cache and webhook queue of a
    run recorded on a server leave nothing behind on this machine. Agent steps are refused here, before
    anything is recorded: their conversations and saved VMs are kept in the local store only (for now)."""
    agents = [step.id for step in inputs.pipeline.steps if step.agent is not None]
    if agents:
        raise InvalidInput(f"{inputs.pipeline.path}: agent step(s) {', '.join(agents)} cannot run on a server "
                           "(--server / LG_SERVER) yet: their conversations and saved VMs are kept in the local "
                           "state store only; run this pipeline without a server")
    return replace(inputs, config=replace(inputs.config, state_dir=store.state_dir))


def announce_pages(client: ApiClient, store: RemoteRunStore, run_id: str | None) -> None:
    """Where the paused run's open gates are decided: their pages on the server."""
    if run_id is None:
        return
    for gate in store.gate_store(time.time).gates(run_id):
        if gate.is_open:
            page = client.page_url(run_id, gate.gate_id)
            click.echo(f"lg: gate {gate.gate_id} of run {run_id} waits on the server: {page}", err=True)


def relocated(record: RunRecord, workspace: Path) -> RunRecord:
    """The run as this checkout holds it: the pipeline and every input file under the workspace it ran in,
    found at the same place under `workspace` (files outside it, such as lg's shipped policies, stay)."""
    old = Path(record.workspace)
    pipeline = old / record.pipeline_path  # a relative path is taken as relative to the workspace
    if not pipeline.is_relative_to(old):
        raise InvalidInput(f"run {record.id}: its pipeline {pipeline} is outside its workspace {old}; it cannot be "
                           "found in another checkout")

    def moved(path: str) -> str:
        return str(workspace / Path(path).relative_to(old)) if Path(path).is_relative_to(old) else path

    inputs = [{**item, "path": moved(str(item["path"]))} for item in record.inputs] if record.inputs else None
    return replace(record, pipeline_path=moved(str(pipeline)), workspace=str(workspace), inputs=inputs)


@dataclass(frozen=True)
class _Held:
    step: StepRecord
    gate: Gate | None


def fetch_approved_effects(client: ApiClient, store: RemoteRunStore, run_id: str, workspace: Path) -> None:
    """Download the held effects the resumed run will apply, each checked against its digest, after checking
    that every file they change is still what it was when they were computed. Nothing is downloaded, and
    nothing applied, unless every file of every such step matches."""
    gates = {gate.gate_id: gate for gate in store.gate_store(time.time).gates(run_id)}
    landing = [_Held(step, gates.get(f"{step.step_id}.effects")) for step in store.steps(run_id)
               if _will_apply(step, gates.get(f"{step.step_id}.effects"))]
    mismatched = [line for held in landing for line in _base_mismatches(held, workspace)]
    if mismatched:
        listed = "\n".join(f"  {line}" for line in mismatched)
        raise InvalidInput(f"run {run_id}: the workspace {workspace} is not the one its held effects were computed "
                           f"against:\n{listed}\nnothing was applied; check out the commit the run started from "
                           "(or cancel the run and start a new one)")
    for held in landing:
        _download(client, store, run_id, held.step)


def _will_apply(step: StepRecord, gate: Gate | None) -> bool:
    if step.status is StepStatus.APPLYING:
        return True
    return step.status is StepStatus.HELD and gate is not None and gate.status is GateStatus.APPROVED


def _base_mismatches(held: _Held, workspace: Path) -> list[str]:
    base = {str(c["path"]): c.get("base_sha256") for c in (held.gate.subject.get("changes", []) if held.gate else [])}
    problems = []
    for change in held.step.changes:
        path = str(change["path"])
        if path not in base:
            continue
        current = host_sha256(workspace, path)
        after = None if change.get("kind") == "deleted" else change.get("sha256")
        if current not in (base[path], after):
            problems.append(f"{path}: sha256 {_short(current)} here, {_short(base[path])} when step "
                            f"{held.step.step_id} ran")
    return problems


def _short(digest: Any) -> str:
    return str(digest)[:12] if digest else "absent"


def _download(client: ApiClient, store: RemoteRunStore, run_id: str, step: StepRecord) -> None:
    manifest = client.get_json(f"/api/v1/runs/{run_id}/steps/{step.step_id}/effects")
    target = effects_dir(store.run_dir(run_id), step.step_id)
    for change in manifest["changes"]:
        needs_content = change.get("kind") != "deleted" and change.get("symlink_target") is None
        if not needs_content:
            continue
        path = str(change["path"])
        parts = _safe_parts(path)
        if not change.get("download"):
            raise InvalidInput(f"run {run_id}: held file {path!r} of step {step.step_id} is not on the server "
                               "(not uploaded, or discarded); nothing was applied")
        data = client.get_bytes(str(change["download"])).body
        if hashlib.sha256(data).hexdigest() != change.get("sha256"):
            raise InvalidInput(f"run {run_id}: held file {path!r} of step {step.step_id} as downloaded does not "
                               "match the digest that was approved; nothing was applied")
        destination = target.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(data)


def fetch_artifacts(client: ApiClient, store: RemoteRunStore, run_id: str) -> None:
    """The artifacts the run's ended steps kept, into this machine's run directory, each checked against its
    digest: the steps still to run receive them (`artifacts_from:`) as they would on the first machine."""
    kept: dict[str, list[Artifact]] = {}
    for entry in store.call("artifacts", run_id=run_id):
        artifact = Artifact(str(entry["step"]), str(entry["path"]), int(entry["size"]), str(entry["sha256"]))
        kept.setdefault(artifact.step, []).append(artifact)
    run_dir = store.run_dir(run_id)
    for step_id, artifacts in kept.items():
        for artifact in artifacts:
            parts = _safe_parts(artifact.path)
            data = client.get_bytes(f"/api/v1/blobs/{artifact.sha256}").body
            if hashlib.sha256(data).hexdigest() != artifact.sha256:
                raise InvalidInput(f"run {run_id}: artifact {step_id}/{artifact.path} as downloaded does not match "
                                   "its recorded digest")
            target = step_artifacts_dir(run_dir, step_id).joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        write_record(run_dir, step_id, artifacts)


def _safe_parts(path: str) -> tuple[str, ...]:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise InvalidInput(f"the server named a file {path!r} outside the run's directory; nothing was applied")
    return parts


def cancel_on_server(client: ApiClient, run_id: str, reason: str) -> None:
    answer = client.post_json(f"/api/v1/runs/{run_id}/cancel", {"reason": reason})
    status = answer.get("status") if isinstance(answer, dict) else None
    if answer.get("cancel_requested") and status != RunStatus.CANCELLED:
        click.echo(f"run {run_id}: asked to stop (its runner stops at its next step; cancel again to close its "
                   "records at once if that runner is gone)")
    else:
        click.echo(f"run {run_id}: cancelled")
