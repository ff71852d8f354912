"""The audit log: every run transition, gate, decision and applied or discarded effect, chained by SHA-256.

Each record holds the hash of the one before it, and its own hash covers its sequence number, time, kind,
run, data and that previous hash. Editing, deleting, inserting or reordering records breaks the chain at the
first record touched, and `verify` says which. Deleting records from the *end* leaves a valid shorter chain,
so the newest sequence number and hash are also kept in `audit.head` beside the database (written atomically);
a log shorter than its head, or whose last hash differs, is reported as truncated. A PostgreSQL store has no
directory beside it that every machine sees, so it keeps its head in a row of its own table (`audit_head`),
moved in the transaction that appends, under the store's write lock (lg.runs.dialect), so in commit order.

`lg audit export` writes the records as JSON; `verify_export` checks such a copy offline, with no database.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.runs.database import Connection, path_of, unreadable_row
from lg.runs.dialect import Dialect, Sqlite

GENESIS = "0" * 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    run_id TEXT,
    data TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
)
"""
_HEAD_TABLE = """
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    kind: str
    run_id: str | None
    data: dict[str, Any]
    prev: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "kind": self.kind, "run_id": self.run_id,
                "data": self.data, "prev": self.prev, "hash": self.hash}


@dataclass(frozen=True)
class Problem:
    seq: int | None
    message: str


def record_hash(seq: int, ts: float, kind: str, run_id: str | None, data_text: str, prev: str) -> str:
    canonical = json.dumps([seq, repr(ts), kind, run_id, data_text, prev], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _hash_matches(seq: int, ts: float, kind: str, run_id: str | None, data_text: str, prev: str,
                  digest: str) -> bool:
    """Whether a stored record is what its hash says; a record whose values are of types append() never wrote
    (a damaged page read back as a blob, say) is not."""
    try:
        return record_hash(seq, ts, kind, run_id, data_text, prev) == digest
    except (TypeError, ValueError):
        return False


def verify_chain(rows: Iterable[tuple[Any, ...]]) -> tuple[list[Problem], int, str]:
    """Every break in a chain of (seq, ts, kind, run_id, data text, prev, hash) in order, and its last seq and
    hash (0 and GENESIS when empty)."""
    problems: list[Problem] = []
    expected_prev, expected_seq, last_seq = GENESIS, 1, 0
    for seq, ts, kind, run_id, data_text, prev, digest in rows:
        if seq != expected_seq:
            problems.append(Problem(seq, f"record {expected_seq} is missing (found {seq} next): "
                                         "records were deleted or renumbered"))
        if prev != expected_prev:
            problems.append(Problem(seq, f"record {seq} does not follow the record before it: "
                                         "a record was inserted, deleted or reordered here"))
        if not _hash_matches(seq, ts, kind, run_id, data_text, prev, digest):
            problems.append(Problem(seq, f"record {seq} ({kind}) was edited: its content does not match its hash"))
        expected_prev, expected_seq, last_seq = digest, seq + 1, seq
    return problems, last_seq, expected_prev


def data_text(data: Mapping[str, Any]) -> str:
    """The text a record's data is hashed as (and stored as)."""
    return json.dumps(dict(data), sort_keys=True, separators=(",", ":"), default=str)


def verify_export(records: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """The chain of records as `lg audit export` wrote them (AuditRecord.to_json), checked with no database:
    each record's data is hashed as the store hashed it (JSON keeps every float and string exactly)."""
    rows = []
    for number, record in enumerate(records, 1):
        try:
            rows.append((record["seq"], record["ts"], record["kind"], record["run_id"], data_text(record["data"]),
                         record["prev"], record["hash"]))
        except (KeyError, TypeError) as error:
            return [Problem(None, f"record {number} of the export is not an audit record: missing {error}")]
    return verify_chain(rows)[0]


class AuditLog:
    """Appends to and verifies the chain. Appends happen inside the caller's connection and transaction."""

    def __init__(self, db: Connection, state_dir: Path, dialect: Dialect | None = None) -> None:
        self._db = db
        self.dialect = dialect or Sqlite()
        self.head_path = state_dir / "audit.head"
        self.head_in_database = self.dialect.name != "sqlite"
        self.unwritten_head: AuditRecord | None = None  # appended in the open transaction, head not yet moved
        db.execute(self.dialect.statement(_SCHEMA))
        if self.head_in_database:
            db.execute(self.dialect.statement(_HEAD_TABLE))

    @property
    def head_name(self) -> str:
        """Where the head is kept, for messages."""
        return "the audit_head table" if self.head_in_database else str(self.head_path)

    def head_exists(self) -> bool:
        return self._read_head() is not None

    def append(self, kind: str, run_id: str | None, data: Mapping[str, Any]) -> AuditRecord:
        """Append one record. Call inside a transaction (BEGIN IMMEDIATE) so seq is exclusive; the store moves
        the head after it commits (before, a rollback would leave a head naming a record that never was)."""
        last = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        ts = time.time()
        text = data_text(data)
        digest = record_hash(seq, ts, kind, run_id, text, prev)
        self._db.execute(
            "INSERT INTO audit (seq, ts, kind, run_id, data, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (seq, ts, kind, run_id, text, prev, digest),
        )
        record = AuditRecord(seq, ts, kind, run_id, dict(data), prev, digest)
        self.unwritten_head = record
        return record

    def records(self, after: int = 0) -> Iterator[AuditRecord]:
        """The records in order; with `after`, only those whose seq is greater."""
        for row in self._db.execute("SELECT seq, ts, kind, run_id, data, prev, hash FROM audit WHERE seq > ? "
                                    "ORDER BY seq", (after,)):
            try:
                yield AuditRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], row[6])
            except (ValueError, TypeError) as error:  # not what append() wrote: the file is damaged
                raise unreadable_row(path_of(self._db), "audit", error) from error

    def last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM audit").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def verify(self) -> list[Problem]:
        """Every break in the chain, in order. An empty list means the log is intact."""
        rows = self._db.execute("SELECT seq, ts, kind, run_id, data, prev, hash FROM audit ORDER BY seq").fetchall()
        problems, last_seq, last_hash = verify_chain(rows)
        problems.extend(self._check_head(last_seq, last_hash))
        return problems

    def _check_head(self, last_seq: int, last_hash: str) -> list[Problem]:
        head = self._read_head()
        if head is None:
            return [] if last_seq == 0 else [Problem(None, f"{self.head_name} is missing: cannot rule out "
                                                            "that the newest records were deleted")]
        head_seq, head_hash = head
        if head_seq < 0:
            return [Problem(None, f"{self.head_name} is unreadable: it was edited or damaged")]
        if last_seq < head_seq:
            return [Problem(last_seq + 1, f"records {last_seq + 1} to {head_seq} were deleted from the end")]
        if last_seq == head_seq and last_hash != head_hash:
            return [Problem(last_seq, f"the newest record {last_seq} differs from the one recorded in the head")]
        return []

    def write_head(self, record: AuditRecord) -> None:
        """Move the head to `record`, unless another process already moved it further (commits and head
        writes of concurrent processes may interleave; the head only ever moves forward). In the database: inside
        the appending transaction, whose write lock orders it."""
        if self.head_in_database:
            self._db.execute("INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE"
                             " SET seq = excluded.seq, hash = excluded.hash WHERE audit_head.seq < excluded.seq",
                             (record.seq, record.hash))
            return
        with self.head_path.with_suffix(".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read_head()
            if current is not None and current[0] >= record.seq:
                return
            temporary = self.head_path.with_suffix(f".tmp.{os.getpid()}")
            with temporary.open("w") as handle:
                handle.write(f"{record.seq} {record.hash}\n")
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(self.head_path)

    def _read_head(self) -> tuple[int, str] | None:
        if self.head_in_database:
            row = self._db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            return (int(row[0]), str(row[1])) if row is not None else None
        try:
            seq_text, digest = self.head_path.read_text().split()
            return int(seq_text), digest
        except FileNotFoundError:
            return None
        except ValueError:
            return (-1, "unreadable")
