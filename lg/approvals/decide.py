"""`lg approve` and `lg reject`: who is deciding, may they, is the signature good, then one recorded decision.

A decision is a small JSON payload naming the run, the gate, the digest of what was shown, the verdict and a
nonce. Signed, it is bound to exactly that gate and subject: replayed onto another gate, or onto the same gate
after its subject changed, it does not match and is refused; replayed onto the same gate it is a duplicate.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.approvals.signing import SignatureRefused, sign, signer_of
from lg.errors import InvalidInput
from lg.runs.gates import Decision, Gate, GateStore, Verdict, describe
from lg.runs.store import RunRecord

PAYLOAD_FORMAT = "lg-decision/1"

MIN_DIGEST_PREFIX = 16
"""Hex digits `--digest` must give at least: what `lg pending`, `lg show` and the card print. A shorter prefix
binds the decision to too little: the empty one matched every digest (issue #20), and 8 digits (32 bits) can be
matched by grinding a changed subject offline in minutes; 16 (64 bits) cannot."""


class DecisionRefused(InvalidInput):
    """The decision cannot be taken (wrong gate, not allowed, bad signature). Nothing was recorded."""


@dataclass(frozen=True)
class SignedDecision:
    payload: str
    signature: str

    def to_json(self) -> dict[str, str]:
        return {"payload": self.payload, "signature": self.signature}

    @classmethod
    def read(cls, path: Path) -> SignedDecision:
        try:
            data = json.loads(path.read_text())
            return cls(str(data["payload"]), str(data["signature"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DecisionRefused(f"--signed {path}: not a signed decision written by `lg approve --sign-only` "
                                  f"({error})") from None


def current_user() -> str:
    """Who runs lg: $LG_USER when set (CI jobs name their identity), else the login name."""
    name = os.environ.get("LG_USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return "unknown"


def resolve_gate(gates: GateStore, run: RunRecord, gate_id: str | None) -> Gate:
    """The named gate of a run, or its only open gate when none is named."""
    if run.finished_for_good:
        raise DecisionRefused(f"run {run.id} already finished ({run.status}); its gates can no longer be decided")
    gates.expire_due()
    every = gates.gates(run.id)
    if gate_id is not None:
        for gate in every:
            if gate.gate_id == gate_id:
                return gate
        raise DecisionRefused(f"run {run.id} has no gate {gate_id!r} (its gates: {describe(every)})")
    open_gates = [gate for gate in every if gate.is_open]
    if len(open_gates) == 1:
        return open_gates[0]
    if not open_gates:
        raise DecisionRefused(f"run {run.id} has no open gate (its gates: {describe(every)})")
    raise DecisionRefused(f"run {run.id} has several open gates; name one: {describe(open_gates)}")


def digest_prefix(text: str) -> str:
    """`--digest TEXT` as the lower-case hex prefix a gate's digest must start with, or refused (exit 2)."""
    prefix = text.strip().lower()
    if len(prefix) < MIN_DIGEST_PREFIX or len(prefix) > 64 or any(c not in "0123456789abcdef" for c in prefix):
        raise DecisionRefused(f"--digest {text!r}: give at least the first {MIN_DIGEST_PREFIX} hex digits of the "
                              "gate's SHA-256 digest, as `lg pending` and `lg show` print it")
    return prefix


def payload_for(gate: Gate, verdict: Verdict, comment: str | None) -> str:
    return decision_payload(gate.run_id, gate.gate_id, gate.digest, verdict, comment)


def decision_payload(run_id: str, gate_id: str, digest: str, verdict: Verdict, comment: str | None) -> str:
    """The payload of a decision on the gate `gate_id` of `run_id` as it was shown (its whole `digest`)."""
    return json.dumps({
        "format": PAYLOAD_FORMAT, "run": run_id, "gate": gate_id, "digest": digest,
        "verdict": verdict, "comment": comment or "", "nonce": secrets.token_hex(16),
    }, sort_keys=True)


def sign_decision(gate: Gate, verdict: Verdict, comment: str | None, key: Path) -> SignedDecision:
    return sign_shown_gate(gate.run_id, gate.gate_id, gate.digest, verdict, comment, key)


def sign_shown_gate(run_id: str, gate_id: str, digest: str, verdict: Verdict, comment: str | None,
                    key: Path) -> SignedDecision:
    """Sign a decision on a gate known by its names and digest (a gate read from `lg serve`, not the store)."""
    payload = decision_payload(run_id, gate_id, digest, verdict, comment)
    return SignedDecision(payload, sign(payload, key))


def decide(gates: GateStore, run: RunRecord, gate: Gate, verdict: Verdict, comment: str | None, *,
           signed: SignedDecision | None = None, expected_digest: str | None = None,
           user: str | None = None) -> Gate:
    """Check and record one decision; returns the gate as it stands afterwards.

    The approver is the signer of a signed decision; otherwise `user`, defaulting to `current_user()`.
    """
    if not gate.is_open:
        raise DecisionRefused(f"gate {gate.gate_id} of run {run.id} is already {gate.status}"
                              + (f" ({gate.outcome})" if gate.outcome else ""))
    if expected_digest is not None and not gate.digest.startswith(digest_prefix(expected_digest)):
        raise DecisionRefused(f"--digest {expected_digest}: gate {gate.gate_id} now has digest {gate.digest[:16]}; "
                              "what you reviewed is not what would be approved")
    if signed is not None:
        approver, payload = _check_signed(gate, verdict, signed)
        comment = payload.get("comment") or comment
    else:
        if gate.rules.require_signature:
            raise DecisionRefused(f"gate {gate.gate_id} requires a signed decision: pass --key with your SSH key "
                                  "(its public half must be in the policy's allowed_signers)")
        approver = user or current_user()
    _check_allowed(gate, run, approver, verdict)
    decision = Decision(
        run_id=run.id, gate_id=gate.gate_id, digest=gate.digest, approver=approver, verdict=verdict,
        comment=comment, payload=signed.payload if signed else payload_for(gate, verdict, comment),
        signature=signed.signature if signed else None, signed_by=approver if signed else None, ts=gates.clock(),
    )
    return gates.record(gate, decision)


def _check_signed(gate: Gate, verdict: Verdict, signed: SignedDecision) -> tuple[str, dict[str, Any]]:
    if gate.rules.allowed_signers is None:
        raise SignatureRefused(f"gate {gate.gate_id}: its policy names no allowed_signers file, so a signature "
                               "cannot be checked; set approvals.allowed_signers in the policy")
    approver = signer_of(signed.payload, signed.signature, Path(gate.rules.allowed_signers))
    try:
        payload = json.loads(signed.payload)
    except ValueError:
        raise SignatureRefused("the signed decision's payload is not JSON") from None
    claims = {"format": PAYLOAD_FORMAT, "run": gate.run_id, "gate": gate.gate_id, "digest": gate.digest,
              "verdict": verdict}
    for key, expected in claims.items():
        if payload.get(key) != expected:
            raise SignatureRefused(f"the signed decision is for {key} {payload.get(key)!r}, not {expected!r}: "
                                   "a signature is valid only for the gate, subject and verdict it was made on")
    return approver, payload


def _check_allowed(gate: Gate, run: RunRecord, approver: str, verdict: Verdict) -> None:
    eligible = gate.rules.eligible
    if eligible is not None and approver not in eligible:
        raise DecisionRefused(f"{approver} may not decide gate {gate.gate_id}: it needs "
                              f"{', '.join(gate.rules.approvers)} ({', '.join(sorted(eligible)) or 'nobody'})")
    # Rejecting one's own run is always allowed: it can only stop things.
    if verdict == "approve" and not gate.rules.allow_self_approval and approver == run.initiator:
        raise DecisionRefused(f"{approver} started run {run.id} and may not decide its gates (the policy forbids "
                              "self-approval); ask another approver")
