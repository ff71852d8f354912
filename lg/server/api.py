"""The JSON API under /api/v1: one plain function per endpoint, run in a worker thread with that thread's stores.

Each handler checks what it was given (run, gate, digest, body fields) and raises ApiError before anything is
written; the writes themselves go through the store's typed methods (lg.runs) and lg.approvals.decide, exactly
as `lg approve` and `lg resume` make them, so the CLI and the server record the same decisions the same way.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lg.approvals.decide import DecisionRefused, SignedDecision, decide, digest_prefix
from lg.approvals.signing import SignatureRefused
from lg.errors import EnvironmentUnfit, InvalidInput
from lg.runner.effects import effects_dir
from lg.runs.gates import Gate, Verdict
from lg.runs.states import EXECUTING_RUNS
from lg.runs.store import RunRecord, RunStore, StepRecord
from lg.runs.tokens import Permission, Token
from lg.server.errors import ApiError, bad_request, conflict, forbidden, not_found
from lg.server.state import Cached, ServerConfig, Stores
from lg.server.views import decision_view, gate_view, run_view, step_view

MAX_COMMENT = 4000
MAX_RUNS = 1000
_OPEN_GATES = "open-gates"  # the cache's key for the list of open gates


@dataclass(frozen=True)
class Call:
    """One request, as a handler sees it."""

    stores: Stores
    config: ServerConfig
    token: Token | None
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    body: Any = None

    @property
    def store(self) -> RunStore:
        return self.stores.runs()


@dataclass(frozen=True)
class Reply:
    """A handler's answer when it is not plain JSON with status 200."""

    data: Any = None
    status: int = 200
    content: bytes | None = None
    media_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


# --- finding things -------------------------------------------------------------------------------------------


def find_run(store: RunStore, run_id: str) -> RunRecord:
    """The run with exactly this id (no prefixes over HTTP: a client names what it saw)."""
    try:
        record = store.run(run_id)
    except InvalidInput:
        record = None
    if record is None or record.id != run_id:
        raise not_found("unknown_run", f"no run {run_id!r}")
    return record


def find_gate(call: Call, record: RunRecord, gate_id: str) -> Gate:
    gates = call.stores.gates()
    gates.expire_due()
    gate = gates.gate(record.id, gate_id)
    if gate is None:
        known = ", ".join(g.gate_id for g in gates.gates(record.id)) or "none"
        raise not_found("unknown_gate", f"run {record.id} has no gate {gate_id!r} (its gates: {known})")
    return gate


def find_step(store: RunStore, record: RunRecord, step_id: str) -> StepRecord:
    for step in store.steps(record.id):
        if step.step_id == step_id:
            return step
    raise not_found("unknown_step", f"run {record.id} has no step {step_id!r}")


# --- runs, steps, logs ----------------------------------------------------------------------------------------


def list_runs(call: Call) -> Any:
    limit = _int_query(call, "limit", 50, 1, MAX_RUNS)
    return [run_view(record) for record in call.store.runs(limit)]


def get_run(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    gates = call.stores.gates().gates(record.id)
    return {**run_view(record), "steps": [step_view(s) for s in call.store.steps(record.id)],
            "gates": [gate_view(g, record) for g in gates]}


def list_steps(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    return [step_view(step) for step in call.store.steps(record.id)]


def step_log(call: Call) -> Reply:
    record = find_run(call.store, call.params["run"])
    step = find_step(call.store, record, call.params["step"])
    path = Path(step.log_path) if step.log_path else None
    if path is None or not path.is_file():
        raise not_found("no_log", f"step {step.step_id} of run {record.id} has no log (it has not run)")
    return Reply(content=path.read_bytes(), media_type="text/plain; charset=utf-8")


# --- gates and decisions ----------------------------------------------------------------------------------------


def pending_gates(call: Call) -> Any:
    store, gates = call.store, call.stores.gates()
    runs: dict[str, RunRecord] = {}
    rows = []
    for gate in gates.open_gates():
        record = runs.get(gate.run_id) or runs.setdefault(gate.run_id, store.run(gate.run_id))
        rows.append(gate_view(gate, record))
    return rows


def pending_gates_cached(call: Call) -> Reply:
    """The list of open gates, which every approver's page and every waiting CI job polls: built once per state
    of the store (see Stores.version) and served encoded until something changes or a gate is due to expire."""
    cached = cached_pending_gates(call)
    if cached is not None:
        return cached
    rows = pending_gates(call)  # may expire gates (a write): never on the event loop's thread
    version = call.stores.version()  # expiring gates on the way appended records: the state read is this one
    until = min((row["expires"] for row in rows if row["expires"] is not None), default=math.inf)
    call.stores.cache[_OPEN_GATES] = Cached(version, until, json.dumps(rows, separators=(",", ":")).encode())
    return Reply(content=call.stores.cache[_OPEN_GATES].body, media_type="application/json")


def cached_pending_gates(call: Call) -> Reply | None:
    """The cached list if it is still current, else None. Two reads of indexed rows, which SQLite readers in WAL
    mode make without waiting for writers: cheap enough for the event loop's thread."""
    cached = call.stores.cache.get(_OPEN_GATES)
    if cached is None or cached.version != call.stores.version() or time.time() >= cached.until:
        return None
    return Reply(content=cached.body, media_type="application/json")


def run_gates(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    return [gate_view(gate, record) for gate in call.stores.gates().gates(record.id)]


def get_gate(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    gate = find_gate(call, record, call.params["gate"])
    return gate_detail(call, record, gate)


def gate_detail(call: Call, record: RunRecord, gate: Gate) -> dict[str, Any]:
    decisions = call.stores.gates().decisions(gate)
    return {**gate_view(gate, record), "card": gate.card, "decisions": [decision_view(d) for d in decisions]}


@dataclass(frozen=True)
class DecisionRequest:
    verdict: Verdict
    digest: str
    comment: str | None
    signed: SignedDecision | None


_DECISION_KEYS = frozenset({"verdict", "digest", "comment", "signed"})


def decision_request(body: Any) -> DecisionRequest:
    """The request body of a decision, checked field by field."""
    if not isinstance(body, dict):
        raise bad_request("invalid_body", "the body must be a JSON object with verdict, digest, comment, signed")
    unknown = sorted(set(body) - _DECISION_KEYS)
    if unknown:
        raise bad_request("invalid_body", f"unknown field(s) {', '.join(unknown)} (known: verdict, digest, comment,"
                                          " signed)")
    verdict = body.get("verdict")
    if verdict not in ("approve", "reject"):
        raise bad_request("invalid_verdict", f"verdict {verdict!r}: 'approve' or 'reject'")
    digest = body.get("digest")
    if not isinstance(digest, str):
        raise bad_request("missing_digest", "every decision names the digest of the gate it was made on (digest: "
                                            "the gate's SHA-256, at least its first 16 hex digits)")
    try:
        digest = digest_prefix(digest)
    except DecisionRefused as error:
        raise bad_request("invalid_digest", str(error).replace("--digest", "digest")) from None
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise bad_request("invalid_comment", f"comment: a string of at most {MAX_COMMENT} characters")
    signed = _signed(body.get("signed"))
    if verdict == "reject" and not (comment or "").strip() and signed is None:
        raise bad_request("missing_reason", "a rejection needs a reason (comment)")
    return DecisionRequest(verdict, digest, comment or None, signed)


def _signed(value: Any) -> SignedDecision | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or set(value) != {"payload", "signature"}
            or not all(isinstance(value[k], str) for k in value)):
        raise bad_request("invalid_signed", "signed: {payload, signature} as written by `lg approve --sign-only`")
    return SignedDecision(value["payload"], value["signature"])


def post_decision(call: Call) -> Reply:
    assert call.token is not None  # noqa: S101 - the endpoint requires a token
    wanted = decision_request(call.body)
    settled = record_decision(call, call.params["run"], call.params["gate"], wanted, call.token.name)
    record = call.store.run(settled.run_id)
    return Reply(data=gate_detail(call, record, settled), status=201)


def record_decision(call: Call, run_id: str, gate_id: str, wanted: DecisionRequest, user: str) -> Gate:
    """Check and record one decision (the API's and the page's); ApiError before anything is written."""
    store = call.store
    find_gate(call, find_run(store, run_id), gate_id)  # 404s, and gates due to expire expired, before the lock
    with checked_writing(store):
        record = find_run(store, run_id)
        gate = find_gate(call, record, gate_id)
        return _decide(call, record, gate, wanted, user)


def _decide(call: Call, record: RunRecord, gate: Gate, wanted: DecisionRequest, user: str) -> Gate:
    if record.finished_for_good:
        raise conflict("run_finished", f"run {record.id} already finished ({record.status}); its gates can no "
                                       "longer be decided")
    if not gate.digest.startswith(wanted.digest):
        raise conflict("stale_digest", f"gate {gate.gate_id} of run {record.id} has digest {gate.digest[:16]}, not "
                                       f"{wanted.digest[:16]}: what was reviewed is not what would be approved; "
                                       "look at the gate again")
    if not gate.is_open:
        raise conflict("gate_closed", f"gate {gate.gate_id} of run {record.id} is already {gate.status}"
                                      + (f" ({gate.outcome})" if gate.outcome else ""))
    try:
        return decide(call.stores.gates(), record, gate, wanted.verdict, wanted.comment, signed=wanted.signed,
                      expected_digest=wanted.digest, user=user)
    except SignatureRefused as error:
        raise forbidden("signature_refused", str(error)) from None
    except DecisionRefused as error:
        raise forbidden("not_allowed", str(error)) from None
    except InvalidInput as error:  # decided by someone else in the meantime, or a replayed decision
        raise conflict("decision_refused", str(error)) from None


@contextmanager
def checked_writing(store: RunStore) -> Iterator[None]:
    """One write transaction that first verifies the audit log (lg never adds to a tampered one). Verified under
    the write lock, the log and its head are read as one state: checked outside it, another writer's commit could
    land between reading the records and reading the head (or the tables they are cross-checked with) and look
    like damage. A refusal inside rolls everything back."""
    with store.transaction():
        try:
            store.require_intact_audit()
        except EnvironmentUnfit as error:
            raise ApiError(503, "audit_damaged", str(error)) from None
        yield


# --- resuming elsewhere -----------------------------------------------------------------------------------------


def claim_run(call: Call) -> Reply:
    """Take over a paused or interrupted run on behalf of the calling runner: the store's compare-and-set claim,
    so of two runners claiming at once exactly one wins. The run is then held by this server's process (a
    killed server leaves it abandoned, to be claimed again)."""
    assert call.token is not None  # noqa: S101
    find_run(call.store, call.params["run"])
    with checked_writing(call.store):
        record = find_run(call.store, call.params["run"])
        if record.status in EXECUTING_RUNS and record.process_alive:
            # the store lets a process take up its own run again; this process holds runs for many runners
            raise conflict("claim_refused", f"run {record.id} is still being run by lg process {record.pid} "
                                            "(claimed already); wait for it, or cancel it")
        try:
            claimed = call.store.claim(record.id, call.token.name)
        except InvalidInput as error:
            raise conflict("claim_refused", str(error)) from None
    gates = call.stores.gates().gates(claimed.id)
    return Reply(data={**run_view(claimed), "gates": [gate_view(g, claimed) for g in gates],
                       "effects": [f"/api/v1/runs/{claimed.id}/steps/{s.step_id}/effects"
                                   for s in call.store.steps(claimed.id) if held_root(call, claimed, s).is_dir()]})


def held_root(call: Call, record: RunRecord, step: StepRecord) -> Path:
    return effects_dir(call.config.state_dir / "runs" / record.id, step.step_id)


def effects_manifest(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    step = find_step(call.store, record, call.params["step"])
    root = held_root(call, record, step)
    changes = []
    for change in step.changes:
        held = _held_file(root, str(change.get("path", "")))
        download = f"/api/v1/runs/{record.id}/steps/{step.step_id}/effects/{change['path']}" if held else None
        changes.append({**change, "download": download})
    return {"run": record.id, "step": step.step_id, "status": step.status.value, "has_held_files": root.is_dir(),
            "changes": changes}


def effect_file(call: Call) -> Reply:
    """One held file, byte for byte, checked against the digest the guest reported."""
    record = find_run(call.store, call.params["run"])
    step = find_step(call.store, record, call.params["step"])
    relative = safe_relative(call.params["path"])
    listed = {str(c.get("path")): c for c in step.changes}
    change = listed.get(relative)
    if change is None:
        raise not_found("unknown_effect", f"step {step.step_id} of run {record.id} made no change {relative!r}")
    held = _held_file(held_root(call, record, step), relative)
    if held is None:
        raise not_found("not_held", f"{relative!r} of step {step.step_id} is not held (applied, discarded, or a "
                                    "deletion or symlink, which carry no content)")
    return Reply(content=held.read_bytes(), media_type="application/octet-stream",
                 headers={"X-Content-SHA256": str(change.get("sha256") or "")})


_BAD_PATH = re.compile(r"[\x00-\x1f\\]")


def safe_relative(text: str) -> str:
    """A workspace-relative POSIX path, or refused: no absolute paths, no `..` or `.` parts, no empty parts,
    no control characters or backslashes."""
    parts = text.split("/")
    if not text or text.startswith("/") or _BAD_PATH.search(text) or any(p in ("", ".", "..") for p in parts):
        raise bad_request("bad_path", f"path {text!r}: a relative path inside the workspace, without '..', '.', "
                                      "empty parts, backslashes or control characters")
    return text


def _held_file(root: Path, relative: str) -> Path | None:
    """The held regular file at `relative` under `root`, never a symlink and never outside it."""
    if not relative or not root.is_dir():
        return None
    path = root.joinpath(*PurePosixPath(relative).parts)
    try:
        inside = path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except OSError:
        return None
    if not inside or path.is_symlink() or not path.is_file():
        return None
    return path


# --- audit ------------------------------------------------------------------------------------------------------


def audit_verify(call: Call) -> Any:
    problems = call.store.verify_audit()
    count = sum(1 for _ in call.store.audit_log.records())
    return {"ok": not problems, "records": count, "problems": [{"seq": p.seq, "message": p.message} for p in problems]}


def audit_export(call: Call) -> Any:
    run_id = call.query.get("run")
    records = call.store.audit_log.records()
    return [record.to_json() for record in records if run_id is None or record.run_id == run_id]


def whoami(call: Call) -> Any:
    assert call.token is not None  # noqa: S101
    return {"name": call.token.name, "role": call.token.role.value, "token": call.token.id}


def _int_query(call: Call, name: str, default: int, low: int, high: int) -> int:
    text = call.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise bad_request("invalid_query", f"{name}={text!r}: a whole number from {low} to {high}")
    return value


Handler = Callable[[Call], Any]


@dataclass(frozen=True)
class Endpoint:
    """One API operation: the route, who may call it, and what the OpenAPI document says of it."""

    method: str
    path: str
    name: str
    permission: Permission | None
    summary: str
    handler: Handler
    response: str  # a schema name in lg.server.openapi.SCHEMAS, or "text" / "bytes"
    body: str | None = None
    errors: tuple[int, ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    # An answer from a cache, tried first on the event loop's thread (no hop to a worker thread); None sends the
    # request on to `handler` in a worker thread. Only reads of a few indexed rows belong here.
    fast: Handler | None = None


_R = Permission
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/v1/whoami", "whoami", _R.READ, "The calling token's identity and role", whoami,
             "Identity"),
    Endpoint("GET", "/api/v1/runs", "listRuns", _R.READ, "Recent runs, newest first", list_runs, "RunList",
             errors=(400,), query=(("limit", "how many (1-1000, default 50)"),)),
    Endpoint("GET", "/api/v1/runs/{run}", "getRun", _R.READ, "A run with its steps and gates", get_run,
             "RunDetail", errors=(404,)),
    Endpoint("GET", "/api/v1/runs/{run}/steps", "listSteps", _R.READ, "A run's steps in order", list_steps,
             "StepList", errors=(404,)),
    Endpoint("GET", "/api/v1/runs/{run}/steps/{step}/log", "getStepLog", _R.READ,
             "A step's output (secrets masked)", step_log, "text", errors=(404,)),
    Endpoint("GET", "/api/v1/gates", "listPendingGates", _R.READ, "Open gates, oldest first",
             pending_gates_cached, "GateList", fast=cached_pending_gates),
    Endpoint("GET", "/api/v1/runs/{run}/gates", "listRunGates", _R.READ, "A run's gates", run_gates, "GateList",
             errors=(404,)),
    Endpoint("GET", "/api/v1/runs/{run}/gates/{gate}", "getGate", _R.READ,
             "A gate with its diff card and the decisions on its current digest", get_gate, "GateDetail",
             errors=(404,)),
    Endpoint("POST", "/api/v1/runs/{run}/gates/{gate}/decisions", "decideGate", _R.DECIDE,
             "Approve or reject a gate, bound to its digest (optionally SSH-signed)", post_decision, "GateDetail",
             body="DecisionRequest", errors=(400, 403, 404, 409, 413, 503)),
    Endpoint("POST", "/api/v1/runs/{run}/claim", "claimRun", _R.RUN,
             "Claim a paused or interrupted run to resume it (exactly one claimant wins)", claim_run, "Claim",
             errors=(404, 409, 503)),
    Endpoint("GET", "/api/v1/runs/{run}/steps/{step}/effects", "listHeldEffects", _R.RUN,
             "A step's changes, with a download link for each held file", effects_manifest, "EffectsManifest",
             errors=(404,)),
    Endpoint("GET", "/api/v1/runs/{run}/steps/{step}/effects/{path:path}", "getHeldEffect", _R.RUN,
             "One held file's content (X-Content-SHA256: its digest as the guest reported it)", effect_file,
             "bytes", errors=(400, 404)),
    Endpoint("GET", "/api/v1/audit/verify", "verifyAudit", _R.READ,
             "Verify the hash-chained audit log and the tables against it", audit_verify, "AuditVerify"),
    Endpoint("GET", "/api/v1/audit/export", "exportAudit", _R.READ, "Every audit record (of one run with ?run=)",
             audit_export, "AuditRecords", query=(("run", "only this run's records"),)),
)
