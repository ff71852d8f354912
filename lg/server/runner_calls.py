"""A remote runner's store calls (`lg run --server`, `lg resume --server`): POST /api/v1/runner/calls
{method, args}. The runner drives its run as it would on a local store, and each store method it calls is
performed here, by the server's own store, in one transaction: the state machine, the audit chain and the
identities stay the server's.

Only the methods in CALLS exist, each with its arguments checked by name and type before anything is written.
What a runner may not choose is not taken from it: a run's initiator, the one who accepts changed inputs, and a
step's log path are the server's (the calling token's name; a path under the server's state directory), so a
runner cannot record a run as someone else's and then approve it as itself, nor point a log at a server file.
An effects gate opens only once every held file it shows is in the blob store: a gate is never approvable
before what it would apply can be downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.model import FileChange
from lg.runner.artifacts import Artifact, recorded, step_artifacts_dir, write_record
from lg.runs.blobs import BlobStore, check_name
from lg.runs.gates import GateRules, GateStore
from lg.runs.states import GateStatus, IllegalTransition, RunStatus, StepStatus
from lg.runs.store import CancelRequested, RunStore
from lg.runs.wire import encode
from lg.server.call import Call, find_run
from lg.server.errors import ApiError, bad_request, conflict
from lg.server.held import safe_relative

MAX_TEXT = 64 * 1024
Check = Callable[[str, Any], Any]


# --- argument checks -----------------------------------------------------------------------------------------


def _refuse(name: str, wanted: str) -> ApiError:
    return bad_request("invalid_argument", f"args.{name}: {wanted}")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _refuse(name, f"a string of at most {MAX_TEXT} characters")
    return value


def _name(name: str, value: Any) -> str:
    """A run, step or gate id: short, no path separators or control characters."""
    text = _text(name, value)
    if not text or len(text) > 200 or "/" in text or "\\" in text or text in (".", "..") or \
            any(ord(c) < 32 for c in text):
        raise _refuse(name, "an id without '/', '\\' or control characters")
    return text


def _optional(check: Check) -> Check:
    return lambda name, value: None if value is None else check(name, value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(name, "a number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _refuse(name, "a whole number")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _refuse(name, "true or false")
    return value


def _object(name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _refuse(name, "a JSON object")
    return value


def _objects(name: str, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _refuse(name, "a list of JSON objects")
    return value


def _enum(kind: type[RunStatus] | type[StepStatus] | type[GateStatus]) -> Check:
    def check(name: str, value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise _refuse(name, f"one of {', '.join(kind)}") from None
    return check


def _steps(name: str, value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value or not all(isinstance(p, list) and len(p) == 2 for p in value):
        raise _refuse(name, "a non-empty list of [step id, name] pairs")
    return [(_name(f"{name}[]", step), _text(f"{name}[]", label)) for step, label in value]


def _changes(name: str, value: Any) -> list[FileChange]:
    known = {field.name for field in fields(FileChange)}
    changes = []
    for item in _objects(name, value):
        if not set(item) <= known or "path" not in item or "kind" not in item:
            raise _refuse(name, f"changes with the fields {', '.join(sorted(known))}")
        try:
            safe_relative(str(item["path"]))
        except ApiError:
            raise _refuse(name, f"change path {str(item['path'])[:200]!r} is not a workspace-relative path") from None
        if item["kind"] not in ("created", "modified", "deleted"):
            raise _refuse(name, "a change's kind: created, modified or deleted")
        changes.append(FileChange(**item))
    return changes


def _kind(name: str, value: Any) -> str:
    if value not in ("explicit", "before", "effects"):
        raise _refuse(name, "a gate kind: explicit, before or effects")
    return str(value)


def _rules(name: str, value: Any) -> GateRules:
    known = {field.name for field in fields(GateRules)}
    data = _object(name, value)
    if not set(data) <= known:
        raise _refuse(name, f"gate rules with the fields {', '.join(sorted(known))}")
    try:
        return GateRules.from_json(data)
    except (TypeError, ValueError):
        raise _refuse(name, "gate rules as lg writes them") from None


@dataclass(frozen=True)
class _Attempt:
    """One attempt of a step as the runner reports it (lg.runs.store.Attempt)."""

    exit_code: int | None
    detail: str | None
    accelerator: str | None
    image_digest: str | None
    boot_seconds: float | None
    outputs: Mapping[str, str]
    changes: list[FileChange]
    security: Mapping[str, Any] | None
    vm: Mapping[str, Any] | None


def _attempt(name: str, value: Any) -> _Attempt:
    data = _object(name, value)
    known = {field.name for field in fields(_Attempt)}
    if set(data) != known:
        raise _refuse(name, f"an attempt with exactly the fields {', '.join(sorted(known))}")
    outputs = _object(f"{name}.outputs", data["outputs"])
    if not all(isinstance(v, str) for v in outputs.values()):
        raise _refuse(f"{name}.outputs", "string values")
    return _Attempt(_optional(_integer)("exit_code", data["exit_code"]), _optional(_text)("detail", data["detail"]),
                    _optional(_text)("accelerator", data["accelerator"]),
                    _optional(_text)("image_digest", data["image_digest"]),
                    _optional(_number)("boot_seconds", data["boot_seconds"]), outputs,
                    _changes(f"{name}.changes", data["changes"]), _optional(_object)("security", data["security"]),
                    _optional(_object)("vm", data["vm"]))


# --- the calls ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    call: Call
    store: RunStore
    gates: GateStore
    blobs: BlobStore

    @property
    def caller(self) -> str:
        assert self.call.token is not None  # noqa: S101 - the endpoint requires a token
        return self.call.token.name


Perform = Callable[[Context, dict[str, Any]], Any]
_S, _N = _text, _name
_RUN = {"run_id": _N}
_STEP = {"run_id": _N, "step_id": _N}


@dataclass(frozen=True)
class Method:
    args: Mapping[str, Check]
    perform: Perform


def _create_run(c: Context, a: dict[str, Any]) -> Any:
    c.store.require_intact_audit()
    # The initiator is the calling token's name, whatever the runner says: self-approval rules depend on it.
    return c.store.create_run(a["pipeline"], Path(a["pipeline_path"]), Path(a["workspace"]), c.caller, a["steps"],
                              a["pipeline_sha256"], a["inputs"], a["input_values"])


def _start_step(c: Context, a: dict[str, Any]) -> None:
    c.store.step(a["run_id"], a["step_id"])  # it exists, so its id names a log file of this run
    # The log is the server's file, filled from the blob the runner uploads (attach_log), never a path it names.
    c.store.start_step(a["run_id"], a["step_id"], server_log_path(c.store, a["run_id"], a["step_id"]),
                       a["script_sha256"])


def server_log_path(store: RunStore, run_id: str, step_id: str) -> Path:
    return store.run_dir(run_id) / f"{step_id}.log"


def _attach_log(c: Context, a: dict[str, Any]) -> None:
    """A step's log, uploaded as a blob, becomes the file `GET .../log` serves."""
    step = c.store.step(a["run_id"], a["step_id"])
    if step.log_path is None:
        raise conflict("no_log", f"step {step.step_id} of run {step.run_id} has not started; it has no log yet")
    data = c.blobs.get(a["sha256"])
    target = server_log_path(c.store, a["run_id"], a["step_id"])
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".log-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    Path(temporary).replace(target)


def _open_gate(c: Context, a: dict[str, Any]) -> Any:
    c.store.step(a["run_id"], a["step_id"])
    if a["kind"] == "effects":
        missing = [str(change.get("path")) for change in a["subject"].get("changes", [])
                   if isinstance(change, dict) and change.get("kind") != "deleted"
                   and change.get("symlink_target") is None and not _uploaded(c, change.get("sha256"))]
        if missing:
            raise conflict("effects_not_uploaded", f"the gate's held file(s) {', '.join(missing[:5])} are not in "
                                                   "the blob store: upload them first (PUT /api/v1/blobs/SHA256); "
                                                   "a gate never opens before its effects can be downloaded")
    rules = _server_signers(c, a["rules"], a["allowed_signers_text"])
    return c.gates.open(a["run_id"], a["step_id"], a["kind"], a["subject"], a["card"], rules)


def _server_signers(c: Context, rules: GateRules, text: str | None) -> GateRules:
    """The gate's allowed signers as the server's own file: the runner sends the file's content (its policy's,
    as its checkout holds it), never a path, since a path is the runner's machine's, and a path the server
    would read on a runner's word could name any file of the server's. Kept by content digest under the state
    directory's signers/; the gate's signatures are checked against that copy (fixed when the gate opens)."""
    if rules.allowed_signers is not None:
        raise _refuse("rules.allowed_signers", "null: send the allowed signers' content as allowed_signers_text; "
                                               "the server reads no path a runner names")
    if text is None:
        return rules
    signers = BlobStore(c.store.state_dir / "signers")  # a directory of its own: blobs are runners' uploads
    return replace(rules, allowed_signers=str(signers.path(signers.put_bytes(text.encode()))))


def _uploaded(c: Context, digest: Any) -> bool:
    try:
        return isinstance(digest, str) and c.blobs.has(check_name(digest))
    except InvalidInput:
        return False


def _audit(c: Context, a: dict[str, Any]) -> None:
    # The one record a runner writes directly (the rest come with the transitions): held effects discarded.
    if a["kind"] != "effects.discarded":
        raise bad_request("invalid_argument", f"args.kind: a runner may only record effects.discarded, not "
                                              f"{a['kind']!r}")
    data = a["data"]
    if not set(data) <= {"step", "reason", "gate"} or not all(isinstance(v, str) for v in data.values()):
        raise bad_request("invalid_argument", "args.data: {step, reason, gate} strings")
    c.store.audit(a["kind"], a["run_id"], **data)


def _attach_artifacts(c: Context, a: dict[str, Any]) -> None:
    """A step's kept artifacts, uploaded as blobs, recorded in the server's run directory as a local run records
    them (`lg artifacts` there, and a runner resuming elsewhere, find them)."""
    c.store.step(a["run_id"], a["step_id"])
    kept = []
    for entry in a["artifacts"]:
        if set(entry) != {"step", "path", "size", "sha256"} or entry["step"] != a["step_id"] \
                or isinstance(entry["size"], bool) or not isinstance(entry["size"], int):
            raise _refuse("artifacts", "entries {step (this step), path, size, sha256}")
        try:
            safe_relative(str(entry["path"]))
            kept.append(Artifact(a["step_id"], str(entry["path"]), entry["size"], check_name(str(entry["sha256"]))))
        except (ApiError, InvalidInput):
            raise _refuse("artifacts", f"artifact {str(entry['path'])[:200]!r}: a workspace-relative path and the "
                                       "SHA-256 of an uploaded blob") from None
    run_dir = c.store.run_dir(a["run_id"])
    directory = step_artifacts_dir(run_dir, a["step_id"])
    shutil.rmtree(directory, ignore_errors=True)  # a previous attempt's files must not mix with this one's
    for artifact in kept:
        target = directory.joinpath(*PurePosixPath(artifact.path).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        c.blobs.copy_to(artifact.sha256, target)
    write_record(run_dir, a["step_id"], kept)


def _artifacts(c: Context, a: dict[str, Any]) -> Any:
    c.store.run(a["run_id"])
    return [artifact.to_json() for artifact in recorded(c.store.run_dir(a["run_id"]))]


def _require_intact(c: Context, a: dict[str, Any]) -> None:
    c.store.require_intact_audit()


CALLS: dict[str, Method] = {
    "require_intact_audit": Method({}, _require_intact),
    "create_run": Method({"pipeline": _S, "pipeline_path": _S, "workspace": _S, "steps": _steps,
                          "pipeline_sha256": _optional(_S), "inputs": _optional(_objects),
                          "input_values": _optional(_object)}, _create_run),
    "run": Method(_RUN, lambda c, a: c.store.run(a["run_id"])),
    "runs": Method({"limit": _integer}, lambda c, a: c.store.runs(max(1, min(a["limit"], 1000)))),
    "start_run": Method(_RUN, lambda c, a: c.store.start_run(a["run_id"])),
    "accept_inputs": Method({**_RUN, "inputs": _objects, "changes": _objects},
                            lambda c, a: c.store.accept_inputs(a["run_id"], a["inputs"], a["changes"], c.caller)),
    "pause": Method({**_RUN, "gate_id": _N, "waiting": _flag},
                    lambda c, a: c.store.pause(a["run_id"], a["gate_id"], waiting=a["waiting"])),
    "continue_run": Method({**_RUN, "gate_id": _N, "gate_status": _enum(GateStatus), "noticed_after": _number},
                           lambda c, a: c.store.continue_run(a["run_id"], a["gate_id"], a["gate_status"],
                                                             a["noticed_after"])),
    "finish_run": Method({**_RUN, "status": _enum(RunStatus), "exit_code": _integer, "error": _optional(_S)},
                         lambda c, a: c.store.finish_run(a["run_id"], a["status"], a["exit_code"], a["error"])),
    "cancel": Method({**_RUN, "reason": _S}, lambda c, a: c.store.cancel(a["run_id"], a["reason"])),
    "step": Method(_STEP, lambda c, a: c.store.step(a["run_id"], a["step_id"])),
    "steps": Method(_RUN, lambda c, a: c.store.steps(a["run_id"])),
    "start_step": Method({**_STEP, "script_sha256": _S}, _start_step),
    "attach_log": Method({**_STEP, "sha256": _S}, _attach_log),
    "attach_artifacts": Method({**_STEP, "artifacts": _objects}, _attach_artifacts),
    "artifacts": Method(_RUN, _artifacts),
    "wait_at_gate": Method({**_STEP, "status": _enum(StepStatus), "gate_id": _N},
                           lambda c, a: c.store.wait_at_gate(a["run_id"], a["step_id"], a["status"], a["gate_id"])),
    "skip_step": Method({**_STEP, "reason": _S},
                        lambda c, a: c.store.skip_step(a["run_id"], a["step_id"], a["reason"])),
    "end_step": Method({**_STEP, "status": _enum(StepStatus), "detail": _S, "audited": _flag},
                       lambda c, a: c.store.end_step(a["run_id"], a["step_id"], a["status"], a["detail"],
                                                     audited=a["audited"])),
    "cancel_step": Method({**_STEP, "reason": _S},
                          lambda c, a: c.store.cancel_step(a["run_id"], a["step_id"], a["reason"])),
    "end_attempts": Method({**_STEP, "status": _enum(StepStatus)},
                           lambda c, a: c.store.end_attempts(a["run_id"], a["step_id"], a["status"])),
    "applying": Method({**_STEP, "effects_grade": _optional(_object)},
                       lambda c, a: c.store.applying(a["run_id"], a["step_id"], a["effects_grade"])),
    "applied": Method({**_STEP, "changes": _changes},
                      lambda c, a: c.store.applied(a["run_id"], a["step_id"], a["changes"])),
    "retry_step": Method({**_STEP, "attempt": _integer},
                         lambda c, a: c.store.retry_step(a["run_id"], a["step_id"], a["attempt"])),
    "record_attempt": Method({**_STEP, "attempt": _attempt},
                             lambda c, a: c.store.record_attempt(a["run_id"], a["step_id"], a["attempt"])),
    "grade_step": Method({**_STEP, "grade": _object},
                         lambda c, a: c.store.grade_step(a["run_id"], a["step_id"], a["grade"])),
    "grade_effects": Method({**_STEP, "grade": _object},
                            lambda c, a: c.store.grade_effects(a["run_id"], a["step_id"], a["grade"])),
    "note_step": Method({**_STEP, "detail": _S},
                        lambda c, a: c.store.note_step(a["run_id"], a["step_id"], a["detail"])),
    "audit": Method({**_RUN, "kind": _S, "data": _object}, _audit),
    "gate_open": Method({**_STEP, "kind": _kind, "subject": _object, "card": _object, "rules": _rules,
                         "allowed_signers_text": _optional(_S)}, _open_gate),
    "gate": Method({**_RUN, "gate_id": _N}, lambda c, a: c.gates.gate(a["run_id"], a["gate_id"])),
    "gates": Method(_RUN, lambda c, a: c.gates.gates(a["run_id"])),
    "gate_expire_due": Method({}, lambda c, a: c.gates.expire_due()),
    "gate_cancel": Method({**_RUN, "reason": _S, "step_id": _optional(_N)},
                          lambda c, a: c.gates.cancel(a["run_id"], a["reason"], a["step_id"])),
}


def runner_call(call: Call) -> Any:
    """POST /api/v1/runner/calls: one store method, checked, performed in one transaction; its result."""
    method, args = _request(call.body)
    store = call.store
    if args.get("run_id") is not None:
        find_run(store, args["run_id"])  # exactly this id (no prefixes over HTTP), else 404 unknown_run
    context = Context(call, store, call.stores.gates(), BlobStore(call.config.blob_dir))
    try:
        with store.transaction():
            result = method.perform(context, args)
    except CancelRequested as refused:
        raise conflict("cancel_requested", str(refused)) from None
    except IllegalTransition as refused:
        raise conflict("illegal_transition", str(refused)) from None
    except EnvironmentUnfit as refused:
        if "audit log" in str(refused):
            raise ApiError(503, "audit_damaged", str(refused)) from None
        raise
    return {"result": encode(result)}


def _request(body: Any) -> tuple[Method, dict[str, Any]]:
    if not isinstance(body, dict) or set(body) != {"method", "args"} or not isinstance(body["args"], dict):
        raise bad_request("invalid_body", "the body must be {\"method\": NAME, \"args\": {...}}")
    method = CALLS.get(body["method"]) if isinstance(body["method"], str) else None
    if method is None:
        raise bad_request("unknown_method", f"method {str(body['method'])[:80]!r} is not a runner call (known: "
                                            f"{', '.join(sorted(CALLS))})")
    given = body["args"]
    if set(given) != set(method.args):
        raise bad_request("invalid_argument", f"{body['method']} takes exactly the args "
                                              f"{', '.join(sorted(method.args)) or '(none)'}; got "
                                              f"{', '.join(sorted(given)) or '(none)'}")
    return method, {name: check(name, given[name]) for name, check in method.args.items()}
