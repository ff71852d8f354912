"""The `store_backend` fixture: the store tests run once on SQLite and once on PostgreSQL (a throwaway cluster,
tests/pgcluster.py), each test on a fresh, empty database.

A test opens its store with `store_backend.open(state_dir)` instead of `RunStore(state_dir)`; opening again
with the same state_dir reaches the same database (a second connection, as a second lg process would have).
Tests that damage the SQLite file itself stay SQLite-only (tests/runs/test_damaged_database.py): PostgreSQL
has no such file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lg.runs.database import Connection
from lg.runs.store import RunStore
from tests import pgcluster


@dataclass
class StoreBackend:
    name: str  # sqlite or postgresql
    cluster: pgcluster.Cluster | None = None
    urls: dict[Path, str] = field(default_factory=dict)  # a database of its own for each state directory

    def url(self, state_dir: Path) -> str | None:
        if self.cluster is None:
            return None
        key = state_dir.resolve()
        if key not in self.urls:
            self.urls[key] = self.cluster.database()
        return self.urls[key]

    def open(self, state_dir: Path) -> RunStore:
        return RunStore(state_dir, self.url(state_dir))

    def drop_all(self) -> None:
        if self.cluster is not None:
            for url in self.urls.values():
                self.cluster.drop(url)
        self.urls.clear()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pgcluster.Cluster]:
    """One PostgreSQL cluster for the session; skipped (with the reason) where its binaries are absent."""
    missing = pgcluster.available()
    if missing:
        pytest.skip(missing)
    cluster = pgcluster.Cluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_backend(request: pytest.FixtureRequest) -> Iterator[StoreBackend]:
    if request.param == "sqlite":
        yield StoreBackend("sqlite")
        return
    backend = StoreBackend("postgresql", request.getfixturevalue("pg_cluster"))
    try:
        yield backend
    finally:
        backend.drop_all()


def raw(store: RunStore) -> Connection:
    """The store's own connection, outside any transaction: what someone with write access to the database
    (the file, or a PostgreSQL role) can do behind lg's back."""
    return store.connection


def delete_head(store: RunStore) -> None:
    """Remove the audit chain's head: the file beside lg.db, or PostgreSQL's audit_head row."""
    if store.audit_log.head_in_database:
        store.connection.execute("DELETE FROM audit_head")
    else:
        store.audit_log.head_path.unlink()


def state_env(monkeypatch: pytest.MonkeyPatch, store: RunStore) -> None:
    """Point the `lg` CLI (in-process) at this store, as LG_STATE_DIR and LG_STATE_URL do."""
    monkeypatch.setenv("LG_STATE_DIR", str(store.state_dir))
    if store.url is not None:
        monkeypatch.setenv("LG_STATE_URL", store.url)
    else:
        monkeypatch.delenv("LG_STATE_URL", raising=False)


ORDER = {"runs": "id", "steps": "run_id, step_id", "gates": "run_id, gate_id",
         "decisions": "run_id, gate_id, digest, approver", "audit": "seq", "tokens": "id"}


def rows_of(store: RunStore, table: str) -> list[tuple[object, ...]]:
    """Every row of a table, in its primary key's order (PostgreSQL has no rowid)."""
    return [tuple(row) for row in store.connection.execute(f"SELECT * FROM {table} ORDER BY {ORDER[table]}")]  # noqa: S608


def emptied(store: RunStore) -> RunStore:
    """The store with every table emptied (a PostgreSQL database reused between the examples of a hypothesis
    test, where making a database for each would cost more than the example)."""
    with store.transaction() as db:
        for table in ("decisions", "gates", "steps", "runs", "tokens", "audit"):
            db.execute(f"DELETE FROM {table}")  # noqa: S608
        if store.audit_log.head_in_database:
            db.execute("DELETE FROM audit_head")
    if not store.audit_log.head_in_database:
        store.audit_log.head_path.unlink(missing_ok=True)
    return store
