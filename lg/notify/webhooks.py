"""Webhooks on gate events: a gate opened, a gate decided (approved, rejected or expired).

The outbox is the audit log itself. Every gate event is an audit record written in the transaction that made it,
so an event cannot be lost between the state change and its notification: a courier reads the records after its
cursor (one per webhook, `state_dir/webhooks/ID.json`) and POSTs each event as JSON, in order. Delivery is at
least once: the cursor moves after a 2xx answer, so a receiver deduplicates by the `X-LG-Delivery` id.

Each body is signed: `X-LG-Signature: t=UNIX_TIME,v1=HEX`, where HEX is HMAC-SHA256, under the key in the
environment variable the webhook names, of `UNIX_TIME.BODY`. A receiver recomputes it and refuses an old t
(replays). No key in the environment means no delivery: an unsigned event is never sent.

Failures are retried with exponential back-off (0.5 s doubling to 8 s) within a pass, and again by later passes
(each lg command that changes state runs one; `lg webhooks deliver` runs one on demand). An event refused for
good (a 4xx other than 408, 425 and 429), or failed MAX_ATTEMPTS times in all, is written to
`webhooks/dead-letters.jsonl` and skipped, so that one broken receiver cannot hold the others' events forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum, auto
from pathlib import Path
from typing import Any

from lg.model import WebhookSpec
from lg.runs.audit import AuditRecord
from lg.runs.states import GateStatus
from lg.runs.store import RunStore

MAX_ATTEMPTS = 10  # per event, across passes
REQUEST_TIMEOUT = 5.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 8.0
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})
DECIDED = {f"gate.{status}": status for status in (GateStatus.APPROVED, GateStatus.REJECTED, GateStatus.EXPIRED)}
USER_AGENT = "LuminaGuard-webhooks/1"


class Outcome(Enum):
    """Of one event's delivery in one pass."""

    DELIVERED = auto()
    GIVEN_UP = auto()  # refused for good, or out of attempts: in the dead letters
    WAITING = auto()  # failed for now; a later pass tries again


@dataclass
class Cursor:
    seq: int
    attempts: int = 0  # failed attempts at the event after seq


@dataclass
class PassResult:
    delivered: int = 0
    dead: int = 0
    pending: bool = False  # an event is still waiting (a failure, or the time budget ran out)


def event_for(record: AuditRecord) -> tuple[str, dict[str, Any]] | None:
    """The webhook event an audit record is, if any."""
    data = record.data
    if record.kind == "gate.opened":
        return "gate.opened", {"gate_kind": data.get("gate_kind"), "step": data.get("step")}
    status = DECIDED.get(record.kind)
    if status is not None:
        return "gate.decided", {"status": str(status), "step": data.get("step"), "outcome": data.get("outcome")}
    return None


def payload(record: AuditRecord, name: str, details: dict[str, Any]) -> dict[str, Any]:
    run, gate = record.run_id, record.data.get("gate")
    body: dict[str, Any] = {
        "event": name,
        "delivery": delivery_id(record),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.ts)),
        "run": run,
        "gate": gate,
        "digest": record.data.get("digest"),
        **{key: value for key, value in details.items() if value is not None},
        "audit": {"seq": record.seq, "hash": record.hash},
    }
    if name == "gate.opened":
        body["commands"] = {"show": f"lg show {run} {gate}",
                            "approve": f"lg approve {run} {gate} --digest {record.data.get('digest')}",
                            "reject": f"lg reject {run} {gate} --reason REASON",
                            "resume": f"lg resume {run}"}
    return body


def delivery_id(record: AuditRecord) -> str:
    return f"{record.run_id}:{record.seq}:{record.hash[:12]}"


def signature(key: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class Webhook:
    """One configured receiver: its cursor, lock and dead letters live under state_dir/webhooks/."""

    def __init__(self, spec: WebhookSpec, state_dir: Path, log: Callable[[str], None]) -> None:
        self.spec = spec
        self.log = log
        self.directory = state_dir / "webhooks"
        self.id = hashlib.sha256(spec.url.encode()).hexdigest()[:16]
        self.cursor_path = self.directory / f"{self.id}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """Whether this process holds the receiver's lock: another lg delivering to it now is skipped, not
        waited for (its pass delivers the same events)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / f"{self.id}.lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    def cursor(self, store: RunStore) -> Cursor:
        try:
            raw = json.loads(self.cursor_path.read_text())
            return Cursor(int(raw["seq"]), int(raw.get("attempts", 0)))
        except FileNotFoundError:
            # A new receiver hears of what happens from now on, not of the whole history.
            cursor = Cursor(store.audit_log.last_seq())
            self.save(cursor)
            return cursor
        except (OSError, ValueError, KeyError, TypeError):
            self.log(f"webhook {self.spec.url}: {self.cursor_path} is unreadable; starting from now")
            return Cursor(store.audit_log.last_seq())

    def save(self, cursor: Cursor) -> None:
        temporary = self.cursor_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"url": self.spec.url, "seq": cursor.seq, "attempts": cursor.attempts}))
        temporary.replace(self.cursor_path)

    def dead_letter(self, record: AuditRecord, reason: str) -> None:
        with (self.directory / "dead-letters.jsonl").open("a") as letters:
            letters.write(json.dumps({"url": self.spec.url, "delivery": delivery_id(record), "kind": record.kind,
                                      "run": record.run_id, "reason": reason, "at": time.time()}) + "\n")
        self.log(f"webhook {self.spec.url}: gave up on {record.kind} of run {record.run_id}: {reason}")

    def run_pass(self, store: RunStore, deadline: float) -> PassResult:
        result = PassResult()
        with self.locked() as mine:
            if not mine:
                return result
            key = os.environ.get(self.spec.secret_env)
            cursor = self.cursor(store)
            for record in store.audit_log.records(after=cursor.seq):
                found = event_for(record)
                if found is None or found[0] not in self.spec.events:
                    cursor = Cursor(record.seq)
                    continue
                if not key:
                    self.log(f"webhook {self.spec.url}: ${self.spec.secret_env} is not set; events wait unsent "
                             "(lg never sends an unsigned event)")
                    result.pending = True
                    break
                outcome = self._deliver(record, *found, key.encode(), cursor, deadline)
                if outcome is Outcome.WAITING:
                    result.pending = True
                    break
                result.delivered += outcome is Outcome.DELIVERED
                result.dead += outcome is Outcome.GIVEN_UP
                cursor = Cursor(record.seq)
                self.save(cursor)
            self.save(cursor)
        return result

    def _deliver(self, record: AuditRecord, name: str, details: dict[str, Any], key: bytes, cursor: Cursor,
                 deadline: float) -> Outcome:
        body = json.dumps(payload(record, name, details), sort_keys=True).encode()
        backoff = FIRST_BACKOFF
        while True:
            problem, permanent = self._post(name, delivery_id(record), body, key)
            if problem is None:
                return Outcome.DELIVERED
            cursor.attempts += 1
            if permanent or cursor.attempts >= MAX_ATTEMPTS:
                self.dead_letter(record, problem if permanent else f"{problem} ({cursor.attempts} attempts)")
                return Outcome.GIVEN_UP
            self.save(cursor)
            if time.monotonic() + backoff > deadline:
                self.log(f"webhook {self.spec.url}: {problem}; will retry (attempt {cursor.attempts} of "
                         f"{MAX_ATTEMPTS})")
                return Outcome.WAITING
            time.sleep(backoff)  # back-off between attempts at a receiver that failed
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _post(self, name: str, delivery: str, body: bytes, key: bytes) -> tuple[str | None, bool]:
        """None when delivered; else what went wrong, and whether trying again is pointless."""
        request = urllib.request.Request(self.spec.url, data=body, method="POST", headers={  # noqa: S310
            "Content-Type": "application/json", "User-Agent": USER_AGENT, "X-LG-Event": name,
            "X-LG-Delivery": delivery, "X-LG-Signature": signature(key, int(time.time()), body)})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:  # noqa: S310 - lg.yaml's schema allows http(s) only
                answer.read(65536)
            return None, False
        except urllib.error.HTTPError as error:
            permanent = 400 <= error.code < 500 and error.code not in RETRYABLE_CLIENT_ERRORS
            return f"HTTP {error.code} {error.reason}", permanent
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", error)
            return f"cannot reach it: {reason}", False


def deliver(state_dir: Path, hooks: tuple[WebhookSpec, ...], budget: float,
            log: Callable[[str], None], state_url: str | None = None) -> PassResult:
    """One pass over every receiver, within `budget` seconds (cursors under state_dir; the records in the
    store there, or in the PostgreSQL store at state_url)."""
    total = PassResult()
    if not hooks:
        return total
    deadline = time.monotonic() + budget
    store = RunStore(state_dir, state_url)
    for spec in hooks:
        result = Webhook(spec, state_dir, log).run_pass(store, deadline)
        total.delivered += result.delivered
        total.dead += result.dead
        total.pending = total.pending or result.pending
    return total


class Courier:
    """Delivers while a command runs (a gate opened during `lg run --wait` is announced when it opens, not when
    the run ends), then once more when it ends, within a bounded time."""

    POLL = 0.5
    FINAL_BUDGET = 10.0

    def __init__(self, state_dir: Path, hooks: tuple[WebhookSpec, ...], log: Callable[[str], None],
                 state_url: str | None = None) -> None:
        self.state_dir, self.hooks, self.log, self.state_url = state_dir, hooks, log, state_url
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lg-webhooks", daemon=True)

    def __enter__(self) -> Courier:
        if self.hooks:
            self._prime()
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.hooks:
            return
        self._stop.set()
        self._thread.join()
        try:
            deliver(self.state_dir, self.hooks, self.FINAL_BUDGET, self.log, self.state_url)
        except Exception as error:  # the command's own result stands; what was not sent waits for the next pass
            self.log(f"webhooks: {error}")

    def _prime(self) -> None:
        """Cursors made before the command starts: its own events are news to a receiver seen for the first
        time."""
        store = RunStore(self.state_dir, self.state_url)
        for spec in self.hooks:
            hook = Webhook(spec, self.state_dir, self.log)
            with hook.locked() as mine:
                if mine:
                    hook.cursor(store)

    def _loop(self) -> None:
        while not self._stop.wait(self.POLL):
            try:
                deliver(self.state_dir, self.hooks, self.POLL * 4, self.log, self.state_url)
            except Exception as error:  # a notification problem must never stop the run
                self.log(f"webhooks: {error}")
