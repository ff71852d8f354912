"""What differs between the two state stores, SQLite and PostgreSQL, and nothing else.

The stores' queries are one text for both (lg.runs.postgres adapts placeholders and rows). What differs is:
- the schema's version: SQLite's `PRAGMA user_version`, PostgreSQL's one-row table `lg_schema`;
- a write transaction: SQLite's BEGIN IMMEDIATE takes the database's write lock at once; on PostgreSQL, BEGIN and
  then a transaction-scoped advisory lock that every lg writer takes first. Either way, one writer at a time, in
  the order they got the lock, and each re-reads what it changes after it has the lock (READ COMMITTED sees
  every commit made before): two decisions on one gate make exactly one transition, and audit records are
  appended, and the chain's head moved, in commit order. (A lock per run or gate row would let no more
  through: nearly every write appends to the one audit chain, whose head must move in commit order, so writers
  queue on it anyway; and one lock, always taken first, cannot deadlock.);
- the column types of DDL (see `ddl`), so that a migration written once in portable SQL means the same on both;
- SQLite's own page check (`PRAGMA quick_check`), which PostgreSQL has no counterpart of.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import time
from typing import Protocol

from lg.runs.database import Connection
from lg.runs.schema import Dialects, Step

# The advisory lock's key: "lgstate" in ASCII, a number no other user of a shared database is likely to pick.
WRITER_LOCK = int.from_bytes(b"lgstate", "big")

# DDL in SQLite's words, in PostgreSQL's: REAL is a 4-byte float there (timestamps would lose their seconds),
# INTEGER 4 bytes (epoch seconds end in 2038), BLOB is BYTEA. Applied to CREATE TABLE and ALTER TABLE only.
_PG_TYPES = (
    (r"\bINTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b", "BIGSERIAL PRIMARY KEY"),
    (r"\bINTEGER\b", "BIGINT"),
    (r"\bREAL\b", "DOUBLE PRECISION"),
    (r"\bBLOB\b", "BYTEA"),
)
_TABLE_DDL = r"\s*(CREATE\s+TABLE|ALTER\s+TABLE)\b"


class Dialect(Protocol):
    name: str

    def prepare(self, db: Connection) -> None:
        """Settings of the connection, before anything is read."""

    def schema_version(self, db: Connection) -> int: ...

    def set_schema_version(self, db: Connection, version: int) -> None: ...

    def begin(self, db: Connection) -> None:
        """Start a write transaction that holds the store's write lock."""

    def statement(self, step: Step) -> str:
        """A migration's step in this dialect."""

    def damage(self, db: Connection) -> list[str]:
        """What the database's own check finds wrong (nothing, where it has none)."""


class Sqlite:
    name = "sqlite"

    def prepare(self, db: Connection) -> None:
        _write_ahead_logging(db)
        db.execute("PRAGMA foreign_keys=ON")

    def schema_version(self, db: Connection) -> int:
        return int(db.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, db: Connection, version: int) -> None:
        db.execute(f"PRAGMA user_version={int(version)}")

    def begin(self, db: Connection) -> None:
        db.execute("BEGIN IMMEDIATE")

    def statement(self, step: Step) -> str:
        return step.sqlite if isinstance(step, Dialects) else step

    def damage(self, db: Connection) -> list[str]:
        found = [str(row[0]) for row in db.execute("PRAGMA quick_check(3)").fetchall()]
        return [] if found == ["ok"] else found


class Postgres:
    name = "postgresql"

    def prepare(self, db: Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS lg_schema (id INTEGER PRIMARY KEY CHECK (id = 1),"
                   " version BIGINT NOT NULL)")

    def schema_version(self, db: Connection) -> int:
        row = db.execute("SELECT version FROM lg_schema WHERE id = 1").fetchone()
        return int(row[0]) if row is not None else 0

    def set_schema_version(self, db: Connection, version: int) -> None:
        db.execute("INSERT INTO lg_schema (id, version) VALUES (1, ?)"
                   " ON CONFLICT (id) DO UPDATE SET version = excluded.version", (int(version),))

    def begin(self, db: Connection) -> None:
        db.execute("BEGIN")
        db.execute("SELECT pg_advisory_xact_lock(?)", (WRITER_LOCK,))

    def statement(self, step: Step) -> str:
        return step.postgresql if isinstance(step, Dialects) else ddl(step)

    def damage(self, db: Connection) -> list[str]:
        return []


@functools.lru_cache(maxsize=256)  # the same few statements at every start; `re` caches the patterns
def ddl(statement: str) -> str:
    """A portable CREATE TABLE or ALTER TABLE in PostgreSQL's types; any other statement as it is."""
    if not re.match(_TABLE_DDL, statement, re.IGNORECASE):
        return statement
    for pattern, replacement in _PG_TYPES:
        statement = re.sub(pattern, replacement, statement, flags=re.IGNORECASE)
    return statement


WAL_WAIT_SECONDS = 30.0


def _write_ahead_logging(db: Connection) -> None:
    """Put the file in WAL mode (kept in the file: only its first opener changes it). The change needs the file
    to itself, and SQLite answers "database is locked" at once, without its busy timeout, while another
    connection is in a transaction (two lg processes opening a new state directory together): wait for it."""
    deadline = time.monotonic() + WAL_WAIT_SECONDS
    while str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
