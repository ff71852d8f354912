"""The state database's connection: damage anywhere in the file is reported as damage, never as a crash.

A damaged lg.db (random bytes, a truncated copy, a page overwritten, text that is not UTF-8) shows itself at
whichever query first touches the bad page, possibly deep inside a command, and as several kinds of exception:
SQLite's "file is not a database" and "database disk image is malformed", a UnicodeDecodeError while decoding a
text column, or a value lg cannot read back (a status that is no status, JSON that does not parse). Every one of
them becomes StateDamaged (exit 5) naming the file and what to do, wherever it happens: the connection's cursors
translate SQLite's and the decoder's errors, and the row readers call `unreadable_row` for theirs. Nothing here
writes: the file is left as it was, for inspection.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from lg.errors import EnvironmentUnfit

# What SQLite calls a file that is not (or no longer) a sound database. Other errors (locked, read-only, disk
# full, a constraint) are not damage and pass through as they are.
_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_FORMAT")


class StateDamaged(EnvironmentUnfit):
    """The state database cannot be read: it is damaged, and left as it is."""

    def __init__(self, path: Path | str, why: str) -> None:
        if isinstance(path, str):  # a PostgreSQL database, named by its URL without the password
            fix = (f"inspect the database {path} with psql (keep it as evidence), restore it from a backup, or "
                   "point `state:` (LG_STATE_URL) at a new database")
        else:
            fix = (f"move the state directory {path.parent} aside (keep it as evidence; `sqlite3 {path} .recover` "
                   "may salvage its records); lg then starts a new one there")
        super().__init__(f"the state database {path} is damaged and unreadable ({why}); it was left as it is",
                         fix=fix)
        self.path = path


class RowConflict(Exception):
    """A row that breaks a unique or foreign key (the PostgreSQL store raises it where sqlite3 raises
    sqlite3.IntegrityError; callers catch both)."""


class Cursor(Protocol):
    """What lg reads from a query's cursor, on either store (sqlite3's cursor, psycopg's)."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the stores use of a connection: sqlite3's, or lg.runs.postgres.PgConnection. SQL is written once,
    with `?` placeholders; rows are read by position and by column name (sqlite3.Row, lg.runs.postgres.Row)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...

    def close(self) -> None: ...


def is_damage(error: sqlite3.DatabaseError) -> bool:
    name = getattr(error, "sqlite_errorname", "") or ""
    # sqlite3 reports a text column that is not UTF-8 as an OperationalError of its own, without a SQLite code
    undecodable = str(error).startswith("Could not decode to UTF-8")
    return name.startswith(_DAMAGE) or type(error) is sqlite3.DatabaseError or undecodable


@contextmanager
def reported(path: Path) -> Iterator[None]:
    """Turn the signs of a damaged file met inside the block into StateDamaged."""
    try:
        yield
    except sqlite3.DatabaseError as error:
        if not is_damage(error):
            raise
        raise StateDamaged(path, str(error)) from error
    except UnicodeDecodeError as error:
        raise StateDamaged(path, f"text that is not UTF-8: {error.reason} at byte {error.start}") from error


def unreadable_row(path: Path | str, table: str, error: Exception) -> StateDamaged:
    """A row whose values lg cannot have written (called by the readers of rows, which know the table)."""
    return StateDamaged(path, f"a row of {table} lg cannot read back: {type(error).__name__}: {error}")


class GuardedCursor(sqlite3.Cursor):
    """A cursor whose queries and fetches report damage as StateDamaged, each under its connection's lock."""

    @property
    def _path(self) -> Path:
        connection = self.connection
        return connection.path if isinstance(connection, GuardedConnection) else Path("lg.db")

    @property
    def _lock(self) -> threading.RLock:
        return lock_of(self.connection)

    def execute(self, sql: str, parameters: Any = (), /) -> GuardedCursor:
        with self._lock, reported(self._path):
            super().execute(sql, parameters)
        return self

    def executemany(self, sql: str, parameters: Any, /) -> GuardedCursor:
        with self._lock, reported(self._path):
            super().executemany(sql, parameters)
        return self

    def fetchone(self) -> Any:
        with self._lock, reported(self._path):
            return super().fetchone()

    def fetchall(self) -> list[Any]:
        with self._lock, reported(self._path):
            return super().fetchall()

    def fetchmany(self, size: int | None = 1) -> list[Any]:
        with self._lock, reported(self._path):
            return super().fetchmany(size if size is not None else self.arraysize)

    def __next__(self) -> Any:
        with self._lock, reported(self._path):
            return super().__next__()


class GuardedConnection(sqlite3.Connection):
    """sqlite3's connection, whose `execute` shortcuts use GuardedCursor (`sqlite3.connect(factory=...)`).

    One connection serves every thread of a run (the engine runs steps in threads, lg.runner.scheduler). Its
    `lock` makes that safe: every statement and fetch holds it, and so does a whole write transaction
    (RunStore.transaction), so a thread never reads or joins another thread's uncommitted transaction, and
    audit records are appended (and the chain's head moved) in commit order."""

    path: Path = Path("lg.db")
    lock: threading.RLock

    def execute(self, sql: str, parameters: Any = (), /) -> GuardedCursor:
        return self.cursor(GuardedCursor).execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> GuardedCursor:
        return self.cursor(GuardedCursor).executemany(sql, parameters)


def connect(path: Path, timeout: float) -> GuardedConnection:
    with reported(path):
        connection = sqlite3.connect(path, timeout=timeout, isolation_level=None, factory=GuardedConnection,
                                     check_same_thread=False)  # shared by a run's threads, under `lock`
    assert isinstance(connection, GuardedConnection)  # noqa: S101 - the factory above
    connection.path = path
    connection.lock = threading.RLock()
    return connection


_UNSHARED = threading.RLock()  # a connection lg did not make is not shared between threads by lg either


def lock_of(connection: Connection) -> threading.RLock:
    """The lock a connection made by `connect` (or lg.runs.postgres.connect) is used under (see
    GuardedConnection)."""
    lock: threading.RLock | None = getattr(connection, "lock", None)
    return lock if lock is not None else _UNSHARED


def path_of(connection: Connection) -> Path | str:
    """The file behind a connection made by `connect`, or the URL (without its password) of a PostgreSQL one
    (for messages)."""
    path: Path | str | None = getattr(connection, "path", None)
    return path if path is not None else Path("lg.db")
