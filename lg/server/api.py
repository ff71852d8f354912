"""The JSON API under /api/v1 as one table: each operation's route, the permission it needs, its handler and
what the OpenAPI document says of it (lg.server.openapi builds the document from this same table, lg.server.app
the routes). Each handler checks what it was given and raises ApiError before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lg.runs.tokens import Permission
from lg.server.blobs import get_blob, put_blob
from lg.server.call import Call
from lg.server.decisions import cancel_run, claim_run, post_decision
from lg.server.held import effect_file, effects_manifest
from lg.server.reads import (
    audit_export,
    audit_verify,
    cached_pending_gates,
    get_gate,
    get_run,
    list_runs,
    list_steps,
    pending_gates_cached,
    run_gates,
    run_status,
    step_log,
    whoami,
)
from lg.server.runner_calls import runner_call

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
    success: int | None = None  # the status of a successful answer, when not the default (201 for a POST body)

    @property
    def raw_body(self) -> bool:
        """The body is bytes (a blob, up to ServerConfig.max_blob), not a JSON object."""
        return self.body == "bytes"


_R = Permission
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/v1/whoami", "whoami", _R.READ, "The calling token's identity and role", whoami,
             "Identity"),
    Endpoint("GET", "/api/v1/runs", "listRuns", _R.READ, "Recent runs, newest first", list_runs, "RunList",
             errors=(400,), query=(("limit", "how many (1-1000, default 50)"),
                                   ("records", "1: each run's whole record, as `lg runs --json` prints it"))),
    Endpoint("GET", "/api/v1/runs/{run}", "getRun", _R.READ, "A run with its steps and gates", get_run,
             "RunDetail", errors=(404,)),
    Endpoint("GET", "/api/v1/runs/{run}/status", "getRunStatus", _R.READ,
             "A run as `lg status --json` prints it: its whole record, steps and gates", run_status, "RunStatus",
             errors=(404,)),
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
    Endpoint("PUT", "/api/v1/blobs/{sha256}", "putBlob", _R.RUN,
             "Store a blob (a held file, a step's log) under the SHA-256 of its bytes", put_blob, "BlobStored",
             body="bytes", errors=(400, 413), success=201),
    Endpoint("GET", "/api/v1/blobs/{sha256}", "getBlob", _R.RUN,
             "A blob's bytes, checked against its name (X-Content-SHA256)", get_blob, "bytes",
             errors=(400, 404, 503)),
    Endpoint("POST", "/api/v1/runner/calls", "runnerCall", _R.RUN,
             "A remote runner's store call (lg run/resume --server), performed in one transaction", runner_call,
             "RunnerResult", body="RunnerCall", errors=(400, 404, 409, 413, 503), success=200),
    Endpoint("POST", "/api/v1/runs/{run}/cancel", "cancelRun", _R.RUN,
             "Cancel a run (lg cancel --server): a paused one at once, a running one at its runner's next call",
             cancel_run, "Run", body="CancelRequest", errors=(400, 404, 409, 413, 503), success=200),
    Endpoint("GET", "/api/v1/audit/verify", "verifyAudit", _R.READ,
             "Verify the hash-chained audit log and the tables against it", audit_verify, "AuditVerify"),
    Endpoint("GET", "/api/v1/audit/export", "exportAudit", _R.READ, "Every audit record (of one run with ?run=)",
             audit_export, "AuditRecords", query=(("run", "only this run's records"),)),
)
