"""Decisions and claims through the API (and the page): every check before anything is written, then the
store's own transitions (lg.approvals.decide, RunStore.claim) inside one write transaction that first verifies
the audit log, exactly as `lg approve` and `lg resume` make them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from lg.approvals.decide import DecisionRefused, SignedDecision, decide, digest_prefix
from lg.approvals.signing import SignatureRefused
from lg.errors import EnvironmentUnfit, InvalidInput
from lg.runs.gates import Gate, Verdict
from lg.runs.states import EXECUTING_RUNS
from lg.runs.store import RunRecord, RunStore
from lg.server.call import Call, Reply, find_gate, find_run
from lg.server.errors import ApiError, bad_request, conflict, forbidden
from lg.server.held import held_root
from lg.server.reads import gate_detail
from lg.server.views import gate_view, run_view

MAX_COMMENT = 4000


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




def cancel_run(call: Call) -> Reply:
    """`lg cancel RUN --server`: a run nobody is running (paused at a gate, interrupted, or its lg process gone)
    is cancelled at once. A run being run is asked to stop (recorded first, as `lg cancel` does): from then on
    the store refuses it any progress, so its runner stops at its next call, and a second cancel finishes the
    records at once (for a runner that died and will never call again)."""
    assert call.token is not None  # noqa: S101
    body = call.body
    if not isinstance(body, dict) or set(body) != {"reason"} or not isinstance(body["reason"], str) \
            or not body["reason"].strip() or len(body["reason"]) > MAX_COMMENT:
        raise bad_request("invalid_body", f"the body must be {{\"reason\": TEXT}} (1 to {MAX_COMMENT} characters)")
    find_run(call.store, call.params["run"])
    with checked_writing(call.store):
        record = find_run(call.store, call.params["run"])
        if record.finished_for_good:
            raise conflict("run_finished", f"run {record.id} already finished ({record.status}); there is nothing "
                                           "to cancel")
        live = record.status in EXECUTING_RUNS and record.process_alive
        if live and record.cancel_requested is None:
            settled = call.store.request_cancel(record.id, body["reason"], call.token.name)
        else:
            settled = call.store.cancel(record.id, body["reason"])
    return Reply(data=run_view(settled))
