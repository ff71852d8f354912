"""The PostgreSQL state store's connection (psycopg 3), shaped like the SQLite one so that the stores' SQL is
written once.

The stores write SQL with `?` placeholders and read rows by position and by column name, as sqlite3 does;
`PgConnection.execute` turns `?` into psycopg's `%s` (and a literal `%` into `%%`), hands enums over as their
values (psycopg would send an Enum's *name*), and returns rows that are tuples which also answer to a column
name and to `dict(row)`. The connection is in autocommit mode, like the SQLite one (isolation_level=None):
transactions are the explicit BEGIN ... COMMIT of lg.runs.dialect, and `in_transaction` is what the server says.
psycopg is imported here only, and this module only when a `postgresql://` state is chosen, so commands that
never touch PostgreSQL do not pay for it.
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.runs.database import RowConflict

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql://", "postgres://")


def is_url(text: str | None) -> bool:
    return text is not None and text.startswith(SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class Row(tuple[Any, ...]):
    """A row read by position (`row[0]`, unpacking) or by column name (`row["status"]`, `dict(row)`), as
    sqlite3.Row is."""

    names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self.names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor: psycopg.Cursor[Any]) -> Any:
    names = {column.name: index for index, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row.names = names
        return row

    return make


@functools.lru_cache(maxsize=512)
def placeholders(sql: str) -> str:
    """sqlite3's `?` as psycopg's `%s`. lg's SQL has no `?` inside string literals (values are parameters)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


class PgConnection:
    """One psycopg connection, shared by a run's threads under `lock` as GuardedConnection is (see there)."""

    def __init__(self, connection: psycopg.Connection[Any], url: str) -> None:
        self._connection = connection
        self.path = redacted(url)  # what messages name (lg.runs.database.path_of)
        self.lock = threading.RLock()

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus  # noqa: PLC0415

        return self._connection.info.transaction_status != TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        values = tuple(_value(value) for value in parameters)
        with self.lock, self._reported():
            return self._connection.execute(placeholders(sql), values)

    def executemany(self, sql: str, parameters: Any, /) -> None:
        rows = [tuple(_value(value) for value in row) for row in parameters]
        with self.lock, self._reported(), self._connection.cursor() as cursor:
            cursor.executemany(placeholders(sql), rows)

    def close(self) -> None:
        self._connection.close()

    @contextmanager
    def _reported(self) -> Iterator[None]:
        import psycopg  # noqa: PLC0415

        try:
            yield
        except psycopg.IntegrityError as error:
            raise RowConflict(str(error)) from error
        except psycopg.OperationalError as error:
            raise EnvironmentUnfit(f"the state database {self.path} failed: {error}",
                                   fix="check that the PostgreSQL server is up and reachable") from error


def connect(url: str, timeout: float) -> PgConnection:
    try:
        import psycopg  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - a dependency of lg; only a broken install lacks it
        raise EnvironmentUnfit("a postgresql:// state needs psycopg 3", fix="pip install 'psycopg[binary]'") from error
    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)),
                                     row_factory=_row_factory)
    except psycopg.ProgrammingError as error:  # a URL psycopg cannot parse
        raise InvalidInput(f"state URL {redacted(url)}: {error}") from error
    except psycopg.OperationalError as error:
        raise EnvironmentUnfit(f"cannot connect to the state database {redacted(url)}: {str(error).strip()}",
                               fix="check the URL (state: in lg.yaml, LG_STATE_URL or --state), that the "
                                   "server is up, and the user's password and rights") from error
    return PgConnection(connection, url)
