"""Gates: where a run stops for a human, durably, in the state database.

A gate holds a *subject* (exactly what is to be approved: the command, the VM profile, and for an effects gate
every held change and output, each with its SHA-256) and its digest. Decisions name the digest they were made
on; only decisions on the gate's current digest count. On one subject a gate changes status exactly once (open ->
approved, rejected, expired or cancelled; lg.runs.states.GATES), inside a write transaction that re-reads it, so
two approvers answering at once, or an approver and the expiry clock, can never both win.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from lg.errors import InvalidInput
from lg.runs.audit import AuditRecord
from lg.runs.database import Connection, RowConflict, path_of, unreadable_row
from lg.runs.states import GATES, GateStatus

GateKind = Literal["explicit", "before", "effects", "tool"]  # tool: an agent step's tool call
Verdict = Literal["approve", "reject"]
Clock = Callable[[], float]


@dataclass(frozen=True)
class GateRules:
    """How a gate is decided, fixed when it opens (a later policy edit does not change an open gate's rules,
    except that allowed_signers is read at each decision, so a revoked key stops working at once)."""

    approvers: tuple[str, ...] = ()  # as written: names and group:NAME
    eligible: tuple[str, ...] | None = None  # the names they resolve to; None means anyone
    count: int = 1
    require_signature: bool = False
    allow_self_approval: bool = False
    allowed_signers: str | None = None
    on_timeout: str = "reject"
    timeout: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GateRules:
        eligible = data.get("eligible")
        return cls(**{**data, "approvers": tuple(data.get("approvers", ())),
                      "eligible": tuple(eligible) if eligible is not None else None})


@dataclass(frozen=True)
class Gate:
    run_id: str
    gate_id: str  # <step>.<kind>, e.g. deploy.effects
    step_id: str
    kind: GateKind
    status: GateStatus
    digest: str
    subject: dict[str, Any]
    card: dict[str, Any]
    rules: GateRules
    created: float
    expires: float | None
    decided: float | None
    outcome: str | None

    @property
    def is_open(self) -> bool:
        return self.status is GateStatus.OPEN


@dataclass(frozen=True)
class Decision:
    run_id: str
    gate_id: str
    digest: str
    approver: str
    verdict: Verdict
    comment: str | None
    payload: str
    signature: str | None
    signed_by: str | None
    ts: float


def subject_digest(subject: Mapping[str, Any]) -> str:
    canonical = json.dumps(subject, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def gate_id_for(step_id: str, kind: GateKind) -> str:
    return f"{step_id}.{'effects' if kind == 'effects' else 'before'}"


class GateDatabase(Protocol):
    """What gates need of the run store (lg.runs.store.RunStore): its connection, its transactions and its audit
    log. A protocol, so that the store can hand its gates work without the two modules importing each other."""

    @property
    def connection(self) -> Connection: ...

    def transaction(self) -> AbstractContextManager[Connection]: ...

    def audit(self, kind: str, run_id: str | None, **data: Any) -> AuditRecord: ...


class GateStore:
    def __init__(self, store: GateDatabase, clock: Clock = time.time) -> None:
        self.store = store
        self.clock = clock
        self._db = store.connection
        self._path = path_of(self._db)

    # --- reading -----------------------------------------------------------------------------------------

    def gate(self, run_id: str, gate_id: str) -> Gate | None:
        row = self._db.execute("SELECT * FROM gates WHERE run_id = ? AND gate_id = ?", (run_id, gate_id)).fetchone()
        return _gate(row, self._path) if row else None

    def gates(self, run_id: str) -> list[Gate]:
        rows = self._db.execute("SELECT * FROM gates WHERE run_id = ? ORDER BY created", (run_id,)).fetchall()
        return [_gate(row, self._path) for row in rows]

    def open_gates(self) -> list[Gate]:
        self.expire_due()
        rows = self._db.execute("SELECT * FROM gates WHERE status = ? ORDER BY created", (GateStatus.OPEN,)).fetchall()
        return [_gate(row, self._path) for row in rows]

    def decisions(self, gate: Gate, *, current_only: bool = True) -> list[Decision]:
        query = "SELECT * FROM decisions WHERE run_id = ? AND gate_id = ?"
        parameters: tuple[str, ...] = (gate.run_id, gate.gate_id)
        if current_only:
            query += " AND digest = ?"
            parameters = (*parameters, gate.digest)
        return [Decision(**dict(row)) for row in self._db.execute(query + " ORDER BY ts", parameters)]

    # --- opening -----------------------------------------------------------------------------------------

    def open(self, run_id: str, step_id: str, kind: GateKind, subject: Mapping[str, Any],
             card: Mapping[str, Any], rules: GateRules, gate_id: str | None = None) -> Gate:
        """The gate for this step and kind (or `gate_id`: an agent step's tool-call gates are one per call),
        opened now, or the existing one when its subject is unchanged (a resumed run finds its gate, and the
        decisions already made on it, again)."""
        gate_id = gate_id or gate_id_for(step_id, kind)
        digest = subject_digest(subject)
        now = self.clock()
        expires = now + rules.timeout if rules.timeout else None
        with self.store.transaction() as db:
            row = db.execute("SELECT * FROM gates WHERE run_id = ? AND gate_id = ?", (run_id, gate_id)).fetchone()
            if row is not None and row["digest"] == digest:
                return _gate(row, self._path)
            if row is not None:
                GATES.check(f"gate {gate_id} of run {run_id}", GateStatus(row["status"]), GateStatus.OPEN)
            values = (kind, GateStatus.OPEN, digest, _dump(subject), _dump(card), _dump(asdict(rules)), now, expires)
            if row is None:
                db.execute("INSERT INTO gates (kind, status, digest, subject, card, rules, created, expires,"
                           " run_id, gate_id, step_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (*values, run_id, gate_id, step_id))
            else:  # the step ran again and did something else: decisions on the old subject no longer count
                db.execute("UPDATE gates SET kind = ?, status = ?, digest = ?, subject = ?, card = ?, rules = ?,"
                           " created = ?, expires = ?, decided = NULL, outcome = NULL"
                           " WHERE run_id = ? AND gate_id = ?", (*values, run_id, gate_id))
            self.store.audit("gate.opened", run_id, gate=gate_id, step=step_id, gate_kind=kind, digest=digest,
                             level=card.get("level"), rules=card.get("rules", []), expires=expires,
                             approvers=list(rules.approvers), count=rules.count)
        opened = self.gate(run_id, gate_id)
        assert opened is not None  # noqa: S101 - just written in this connection
        return opened

    # --- closing -----------------------------------------------------------------------------------------

    def expire_due(self) -> list[Gate]:
        """Mark every open gate whose time is up as expired (never as a human rejection)."""
        now = self.clock()
        due = self._db.execute("SELECT run_id, gate_id FROM gates WHERE status = ? AND expires IS NOT NULL"
                               " AND expires <= ?", (GateStatus.OPEN, now)).fetchall()
        expired = []
        for run_id, gate_id in due:
            with self.store.transaction():
                gate = self.gate(run_id, gate_id)
                if gate is None or not gate.is_open:
                    continue  # someone decided it in the meantime
                outcome = f"expired: nobody decided within the gate's timeout (on_timeout: {gate.rules.on_timeout})"
                self._close(gate, GateStatus.EXPIRED, outcome, now)
            expired.append(gate)
        return expired

    def cancel(self, run_id: str, reason: str, step_id: str | None = None) -> None:
        """Close every open gate of the run (or of one of its steps) as cancelled (RunStore.cancel and
        RunStore.cancel_step do this as part of cancelling the run, or the step)."""
        with self.store.transaction():
            for gate in self.gates(run_id):
                if gate.is_open and step_id in (None, gate.step_id):
                    self._close(gate, GateStatus.CANCELLED, reason, self.clock())

    def record(self, gate: Gate, decision: Decision) -> Gate:
        """Store one decision and, when it settles the gate, close the gate: all in one transaction that
        re-reads the gate, so concurrent decisions produce exactly one transition."""
        with self.store.transaction() as db:
            current = self.gate(gate.run_id, gate.gate_id)
            refusal = self._refusal(gate, current, decision)
            if refusal is None:
                self._insert(db, gate, decision)
                self._settle(self.gate(gate.run_id, gate.gate_id) or gate)
        if refusal is not None:  # raised after the commit, so an expiry noticed on the way is kept
            raise InvalidInput(refusal)
        settled = self.gate(gate.run_id, gate.gate_id)
        assert settled is not None  # noqa: S101
        return settled

    def _refusal(self, gate: Gate, current: Gate | None, decision: Decision) -> str | None:
        if current is None:
            return f"run {gate.run_id} has no gate {gate.gate_id!r}"
        if current.is_open and current.expires is not None and current.expires <= self.clock():
            self._close(current, GateStatus.EXPIRED, "expired: nobody decided within the gate's timeout "
                        f"(on_timeout: {current.rules.on_timeout})", self.clock())
            return f"gate {gate.gate_id} of run {gate.run_id} expired before this decision"
        if not current.is_open:
            return (f"gate {gate.gate_id} of run {gate.run_id} is already {current.status}"
                    + (f" ({current.outcome})" if current.outcome else ""))
        if current.digest != decision.digest:
            return (f"gate {gate.gate_id} changed since it was shown (digest now {current.digest[:12]}, "
                    f"decision made on {decision.digest[:12]}): look at it again with `lg show`")
        return None

    def _insert(self, db: Connection, gate: Gate, decision: Decision) -> None:
        try:
            db.execute("INSERT INTO decisions (run_id, gate_id, digest, approver, verdict, comment, payload,"
                       " signature, signed_by, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (decision.run_id, decision.gate_id, decision.digest, decision.approver,
                        decision.verdict, decision.comment, decision.payload, decision.signature,
                        decision.signed_by, decision.ts))
        except (sqlite3.IntegrityError, RowConflict):
            raise InvalidInput(f"{decision.approver} already decided gate {gate.gate_id}, or this signed "
                               "decision was used before (a decision is never counted twice)") from None
        self.store.audit("gate.decision", gate.run_id, gate=gate.gate_id, digest=decision.digest,
                         approver=decision.approver, verdict=decision.verdict, comment=decision.comment,
                         signed_by=decision.signed_by,
                         signature_sha256=_sha256(decision.signature) if decision.signature else None)

    def _settle(self, gate: Gate) -> None:
        decisions = self.decisions(gate)
        rejections = [d for d in decisions if d.verdict == "reject"]
        approvals = {d.approver for d in decisions if d.verdict == "approve"}
        if rejections:  # one eligible rejection is a veto
            first = rejections[0]
            self._close(gate, GateStatus.REJECTED,
                        f"rejected by {first.approver}: {first.comment or 'no reason given'}", first.ts)
        elif len(approvals) >= gate.rules.count:
            self._close(gate, GateStatus.APPROVED, f"approved by {', '.join(sorted(approvals))}", self.clock())

    def _close(self, gate: Gate, status: GateStatus, outcome: str, when: float) -> None:
        """Decide the gate, checked against the table on its status as this transaction reads it."""
        with self.store.transaction() as db:
            row = db.execute("SELECT status FROM gates WHERE run_id = ? AND gate_id = ?",
                             (gate.run_id, gate.gate_id)).fetchone()
            current = GateStatus(row["status"])
            GATES.check(f"gate {gate.gate_id} of run {gate.run_id}", current, status)
            db.execute("UPDATE gates SET status = ?, decided = ?, outcome = ? WHERE run_id = ? AND gate_id = ?"
                       " AND status = ?", (status, when, outcome, gate.run_id, gate.gate_id, current))
            self.store.audit(f"gate.{status}", gate.run_id, gate=gate.gate_id, step=gate.step_id,
                             digest=gate.digest, outcome=outcome)


def _gate(row: Any, path: Path | str) -> Gate:
    data = dict(row)
    try:
        return Gate(
            run_id=data["run_id"], gate_id=data["gate_id"], step_id=data["step_id"], kind=data["kind"],
            status=GateStatus(data["status"]), digest=data["digest"], subject=json.loads(data["subject"]),
            card=json.loads(data["card"]), rules=GateRules.from_json(json.loads(data["rules"])),
            created=data["created"], expires=data["expires"], decided=data["decided"], outcome=data["outcome"],
        )
    except (ValueError, TypeError, KeyError, AttributeError) as error:  # what lg never wrote: a damaged file
        raise unreadable_row(path, "gates", error) from error


def _dump(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def describe(gates: Sequence[Gate]) -> str:
    return ", ".join(f"{gate.gate_id} ({gate.status})" for gate in gates) or "none"
