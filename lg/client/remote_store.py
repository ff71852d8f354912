"""A run recorded on `lg serve` (`lg run --server`, `lg resume --server`): the store the runner drives, each of
its methods one call of POST /api/v1/runner/calls, performed by the server's own store (lg.server.runner_calls).

What stays on this machine lives in a scratch directory the command removes at exit: the runs' directories
(step logs as they are written, held effects between the VM and the workspace). What the server must have
before it records something that refers to it is uploaded first, to its blob store: a step's log before it
is attached to the step (at each attempt's end, at each gate and when the run ends), and every held file of an
effects gate before the gate opens, so that a gate is never approvable before its effects can be downloaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any

from lg.client.http import ApiClient, ServerRefused
from lg.errors import EnvironmentUnfit, InternalError, InvalidInput, LgError
from lg.model import FileChange
from lg.runs import wire
from lg.runs.gates import Clock, Gate, GateKind, GateRules
from lg.runs.states import GateStatus, RunStatus, StepStatus
from lg.runs.store import Attempt, CancelRequested, RunRecord, StepRecord, run_directory

CALLS = "/api/v1/runner/calls"
HeldDir = Callable[[Path, str], Path]  # (run directory, step id) -> the step's held effects (lg.runner.effects)
ARTIFACTS = "artifacts"  # a run directory's kept artifacts: STEP.json and STEP/PATH (lg.runner.artifacts)


def _local(refused: ServerRefused) -> LgError | InternalError:
    """The server's refusal as the exception the local store would have raised, so the engine reacts alike."""
    if refused.code == "cancel_requested":
        return CancelRequested(refused.server_message)
    if refused.code == "illegal_transition":
        return InternalError(refused.server_message)
    if refused.code == "invalid_input":
        return InvalidInput(refused.server_message)
    return refused


class RemoteRunStore:
    """lg.runs.ports.RunStoreLike over HTTP."""

    def __init__(self, client: ApiClient, scratch: Path, held_dir: HeldDir) -> None:
        self.client = client
        self.state_dir = scratch
        self.path = scratch / "no-local-database"  # `lg cancel` reaches a remote run through the server
        self._held_dir = held_dir
        self._logs: dict[tuple[str, str], Path] = {}
        self._uploaded: dict[tuple[str, str], str] = {}

    def call(self, method: str, **args: Any) -> Any:
        try:
            answer = self.client.post_json(CALLS, {"method": method, "args": args})
        except ServerRefused as refused:
            raise _local(refused) from None
        return answer["result"] if isinstance(answer, dict) else None

    def gate_store(self, clock: Clock) -> RemoteGateStore:
        return RemoteGateStore(self)  # gates expire by the server's clock, the one every approver sees

    # --- blobs ---------------------------------------------------------------------------------------------

    def upload(self, data: bytes, expected: str | None = None) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if expected is not None and digest != expected:
            raise InvalidInput(f"a held file does not match the digest the guest reported ({expected[:12]}, is "
                               f"{digest[:12]}); nothing was uploaded")
        self.client.put_bytes(f"/api/v1/blobs/{digest}", data)
        return digest

    def upload_log(self, run_id: str, step_id: str) -> None:
        """The step's log as it stands, attached to the step on the server (`GET .../log`), if it changed."""
        path = self._logs.get((run_id, step_id))
        if path is None or not path.is_file():
            return
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self._uploaded.get((run_id, step_id)) == digest:
            return
        self.upload(data)
        self.call("attach_log", run_id=run_id, step_id=step_id, sha256=digest)
        self._uploaded[(run_id, step_id)] = digest

    def upload_logs(self, run_id: str) -> None:
        for run, step in list(self._logs):
            if run == run_id:
                self.upload_log(run, step)

    def upload_artifacts(self, run_id: str, step_id: str) -> None:
        """The artifacts the step's attempt kept (its STEP.json and files), recorded on the server."""
        root = self.run_dir(run_id) / ARTIFACTS
        listing = root / f"{step_id}.json"
        if not listing.is_file():
            return
        try:
            kept = json.loads(listing.read_text())
        except (OSError, ValueError) as error:
            raise InvalidInput(f"{listing}: not an artifact list lg wrote ({error})") from None
        for artifact in kept:
            data = (root / step_id).joinpath(*PurePosixPath(str(artifact["path"])).parts).read_bytes()
            self.upload(data, str(artifact["sha256"]))
        self.call("attach_artifacts", run_id=run_id, step_id=step_id, artifacts=kept)

    def upload_held(self, run_id: str, step_id: str, subject: Mapping[str, Any]) -> None:
        """Every held file an effects gate shows, into the server's blob store (digest checked here and there)."""
        held = self._held_dir(self.run_dir(run_id), step_id)
        for change in subject.get("changes", []):
            if change.get("kind") == "deleted" or change.get("symlink_target") is not None:
                continue
            path = held.joinpath(*PurePosixPath(str(change["path"])).parts)
            try:
                data = path.read_bytes()
            except OSError as error:
                raise InvalidInput(f"held effect {change['path']!r} cannot be read from {held}: {error}") from None
            self.upload(data, change.get("sha256"))

    # --- runs ----------------------------------------------------------------------------------------------

    def require_intact_audit(self) -> None:
        self.call("require_intact_audit")

    def audit(self, kind: str, run_id: str | None, **data: Any) -> None:
        self.call("audit", run_id=run_id, kind=kind, data=data)

    def run(self, run_id: str) -> RunRecord:
        return wire.run_record(self.call("run", run_id=run_id))

    def runs(self, limit: int = 20) -> list[RunRecord]:
        return [wire.run_record(item) for item in self.call("runs", limit=limit)]

    def run_dir(self, run_id: str) -> Path:
        return run_directory(self.state_dir, run_id)  # the scratch directory's, on this machine

    def create_run(self, pipeline: str, pipeline_path: Path, workspace: Path, initiator: str,
                   steps: list[tuple[str, str]], pipeline_sha256: str | None = None,
                   inputs: list[dict[str, Any]] | None = None,
                   input_values: Mapping[str, Any] | None = None) -> RunRecord:
        # `initiator` is not sent: the server records the run as its token's (lg.server.runner_calls)
        return wire.run_record(self.call(
            # absolute, so that another checkout finds the pipeline at the same place under its workspace
            "create_run", pipeline=pipeline, pipeline_path=str(pipeline_path.resolve()), workspace=str(workspace),
            steps=[list(step) for step in steps], pipeline_sha256=pipeline_sha256, inputs=inputs,
            input_values=dict(input_values) if input_values is not None else None))

    def accept_inputs(self, run_id: str, inputs: list[dict[str, Any]], changes: list[dict[str, Any]],
                      by: str) -> None:
        self.call("accept_inputs", run_id=run_id, inputs=inputs, changes=changes)

    def start_run(self, run_id: str) -> None:
        self.call("start_run", run_id=run_id)

    def claim(self, run_id: str, by: str) -> RunRecord:
        """POST .../claim: of runners claiming at once exactly one wins; the claim is the token's."""
        self.client.post_json(f"/api/v1/runs/{run_id}/claim", {})
        return self.run(run_id)

    def pause(self, run_id: str, gate_id: str, *, waiting: bool) -> None:
        self.upload_logs(run_id)
        self.call("pause", run_id=run_id, gate_id=gate_id, waiting=waiting)

    def continue_run(self, run_id: str, gate_id: str, gate_status: GateStatus, noticed_after: float) -> None:
        self.call("continue_run", run_id=run_id, gate_id=gate_id, gate_status=str(gate_status),
                  noticed_after=noticed_after)

    def finish_run(self, run_id: str, status: RunStatus, exit_code: int, error: str | None) -> None:
        self.upload_logs(run_id)
        self.call("finish_run", run_id=run_id, status=str(status), exit_code=int(exit_code), error=error)

    def cancel(self, run_id: str, reason: str) -> RunRecord:
        self.upload_logs(run_id)
        return wire.run_record(self.call("cancel", run_id=run_id, reason=reason))

    # --- steps ---------------------------------------------------------------------------------------------

    def step(self, run_id: str, step_id: str) -> StepRecord:
        return wire.step_record(self.call("step", run_id=run_id, step_id=step_id))

    def steps(self, run_id: str) -> list[StepRecord]:
        return [wire.step_record(item) for item in self.call("steps", run_id=run_id)]

    def start_step(self, run_id: str, step_id: str, log_path: Path, script_sha256: str) -> None:
        self._logs[(run_id, step_id)] = log_path  # written here, uploaded at the attempt's end
        self.call("start_step", run_id=run_id, step_id=step_id, script_sha256=script_sha256)

    def wait_at_gate(self, run_id: str, step_id: str, status: StepStatus, gate_id: str) -> None:
        self.upload_log(run_id, step_id)
        self.call("wait_at_gate", run_id=run_id, step_id=step_id, status=str(status), gate_id=gate_id)

    def skip_step(self, run_id: str, step_id: str, reason: str) -> None:
        self.call("skip_step", run_id=run_id, step_id=step_id, reason=reason)

    def end_step(self, run_id: str, step_id: str, status: StepStatus, detail: str, *,
                 audited: bool = True) -> None:
        self.upload_log(run_id, step_id)
        self.call("end_step", run_id=run_id, step_id=step_id, status=str(status), detail=detail, audited=audited)

    def cancel_step(self, run_id: str, step_id: str, reason: str) -> None:
        self.upload_log(run_id, step_id)
        self.call("cancel_step", run_id=run_id, step_id=step_id, reason=reason)

    def end_attempts(self, run_id: str, step_id: str, status: StepStatus) -> None:
        self.upload_log(run_id, step_id)
        self.call("end_attempts", run_id=run_id, step_id=step_id, status=str(status))

    def applying(self, run_id: str, step_id: str, effects_grade: Mapping[str, Any] | None = None) -> None:
        self.call("applying", run_id=run_id, step_id=step_id,
                  effects_grade=dict(effects_grade) if effects_grade is not None else None)

    def applied(self, run_id: str, step_id: str, changes: Sequence[FileChange]) -> None:
        self.call("applied", run_id=run_id, step_id=step_id, changes=[asdict(change) for change in changes])

    def retry_step(self, run_id: str, step_id: str, attempt: int) -> None:
        self.call("retry_step", run_id=run_id, step_id=step_id, attempt=attempt)

    def record_attempt(self, run_id: str, step_id: str, attempt: Attempt) -> None:
        self.upload_log(run_id, step_id)
        self.upload_artifacts(run_id, step_id)
        self.call("record_attempt", run_id=run_id, step_id=step_id, attempt={
            "exit_code": attempt.exit_code, "detail": attempt.detail, "accelerator": attempt.accelerator,
            "image_digest": attempt.image_digest, "boot_seconds": attempt.boot_seconds,
            "outputs": dict(attempt.outputs), "changes": [asdict(change) for change in attempt.changes],
            "security": dict(attempt.security) if attempt.security is not None else None,
            "vm": dict(attempt.vm) if attempt.vm is not None else None})

    def grade_step(self, run_id: str, step_id: str, grade: Mapping[str, Any]) -> None:
        self.call("grade_step", run_id=run_id, step_id=step_id, grade=dict(grade))

    def grade_effects(self, run_id: str, step_id: str, grade: Mapping[str, Any]) -> None:
        self.call("grade_effects", run_id=run_id, step_id=step_id, grade=dict(grade))

    def note_step(self, run_id: str, step_id: str, detail: str) -> None:
        self.call("note_step", run_id=run_id, step_id=step_id, detail=detail)


def _plain(data: Mapping[str, Any]) -> dict[str, Any]:
    """A card as JSON holds it (the local store writes it with default=str too)."""
    plain: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return plain


class RemoteGateStore:
    """lg.runs.ports.GateStoreLike over HTTP: the server's gates."""

    def __init__(self, runs: RemoteRunStore) -> None:
        self.runs = runs

    def gate(self, run_id: str, gate_id: str) -> Gate | None:
        found = self.runs.call("gate", run_id=run_id, gate_id=gate_id)
        return wire.gate(found) if found is not None else None

    def gates(self, run_id: str) -> list[Gate]:
        return [wire.gate(item) for item in self.runs.call("gates", run_id=run_id)]

    def open(self, run_id: str, step_id: str, kind: GateKind, subject: Mapping[str, Any],
             card: Mapping[str, Any], rules: GateRules) -> Gate:
        if kind == "effects":  # the held files first: the server refuses to open the gate without them
            self.runs.upload_held(run_id, step_id, subject)
        signers = _signers_text(rules.allowed_signers)  # the content: the path is this machine's
        return wire.gate(self.runs.call("gate_open", run_id=run_id, step_id=step_id, kind=kind,
                                        subject=dict(subject), card=_plain(card),
                                        rules={**asdict(rules), "allowed_signers": None},
                                        allowed_signers_text=signers))

    def expire_due(self) -> list[Gate]:
        return [wire.gate(item) for item in self.runs.call("gate_expire_due")]

    def cancel(self, run_id: str, reason: str, step_id: str | None = None) -> None:
        self.runs.call("gate_cancel", run_id=run_id, reason=reason, step_id=step_id)


MAX_SIGNERS_BYTES = 64 * 1024  # what the server takes (lg.server.runner_calls.MAX_TEXT)


def _signers_text(path: str | None) -> str | None:
    """The policy's allowed_signers file as the server will check signatures against it."""
    if path is None:
        return None
    try:
        with Path(path).open("rb") as source:
            data = source.read(MAX_SIGNERS_BYTES + 1)
        if len(data) > MAX_SIGNERS_BYTES:
            raise EnvironmentUnfit(f"the policy's allowed_signers file {path} is over 64 KiB")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise EnvironmentUnfit(f"cannot read the policy's allowed_signers file {path} to send it to the server "
                               f"({error})") from None
