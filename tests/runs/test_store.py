from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import psutil
import psycopg
import pytest

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.model import FileChange
from lg.runner.step_vm import AttemptResult
from lg.runs.dialect import ddl
from lg.runs.states import RunStatus, StepStatus
from lg.runs.store import RunStore
from tests.stores import StoreBackend


def test_runs_and_steps_round_trip(tmp_path: Path, store_backend: StoreBackend) -> None:
    store = store_backend.open(tmp_path / "state")
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("a", "A"), ("b", "B")])
    assert run.status == "pending" and run.initiator == "alice"
    store.start_run(run.id)
    store.start_step(run.id, "a", tmp_path / "a.log", "ab" * 32)
    store.record_attempt(run.id, "a", AttemptResult(StepStatus.SUCCEEDED, 0, None, outputs={"v": "1"},
                                                    changes=(FileChange("x", "created"),)))
    store.applying(run.id, "a")
    store.applied(run.id, "a", (FileChange("x", "created"),))
    assert store.run(run.id).status == "running"
    a, b = store.steps(run.id)
    assert (a.status, a.outputs, a.changes[0]["path"], b.status) == ("succeeded", {"v": "1"}, "x", "pending")
    assert store.run(run.id[:15]).id == run.id  # unique prefixes work
    # a second process sees committed state (WAL; PostgreSQL: another connection)
    other = store_backend.open(tmp_path / "state")
    assert other.runs()[0].id == run.id


def test_unknown_and_ambiguous_run_ids(tmp_path: Path, store_backend: StoreBackend) -> None:
    store = store_backend.open(tmp_path)
    with pytest.raises(InvalidInput, match="no run 'nope'"):
        store.run("nope")
    store.create_run("a", tmp_path, tmp_path, "x", [])
    store.create_run("b", tmp_path, tmp_path, "x", [])
    with pytest.raises(InvalidInput, match="ambiguous"):
        store.run("2")


def test_a_corrupt_database_is_reported_and_kept(tmp_path: Path) -> None:  # SQLite only: PostgreSQL has no file
    (tmp_path / "lg.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(EnvironmentUnfit, match="unreadable"):
        RunStore(tmp_path)
    assert (tmp_path / "lg.db").read_bytes().startswith(b"this is not a database")


def test_a_newer_schema_is_refused(tmp_path: Path, store_backend: StoreBackend) -> None:
    store = store_backend.open(tmp_path)
    store.dialect.set_schema_version(store.connection, 99)
    store.close()
    with pytest.raises(EnvironmentUnfit, match="newer lg"):
        store_backend.open(tmp_path)


def test_a_run_whose_lg_process_is_gone_is_abandoned(tmp_path: Path, store_backend: StoreBackend) -> None:
    store = store_backend.open(tmp_path)
    run = store.create_run("demo", tmp_path, tmp_path, "alice", [])
    store.start_run(run.id)
    assert not store.run(run.id).abandoned  # this very process runs it
    store.connection.execute("UPDATE runs SET pid = ? WHERE id = ?", (2**22 + 17, run.id))  # no such process
    assert store.run(run.id).abandoned
    assert store.run(run.id).shown_status.startswith("abandoned")
    store.finish_run(run.id, RunStatus.FAILED, 1, "it failed")
    assert not store.run(run.id).abandoned


def test_an_older_database_is_migrated(tmp_path: Path, store_backend: StoreBackend) -> None:
    version_1 = """
        CREATE TABLE runs (id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, pipeline_path TEXT NOT NULL,
            workspace TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
            exit_code INTEGER, error TEXT, initiator TEXT NOT NULL);
        CREATE TABLE steps (run_id TEXT NOT NULL, step_id TEXT NOT NULL, position INTEGER NOT NULL,
            name TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, started REAL,
            finished REAL, exit_code INTEGER, accelerator TEXT, image_digest TEXT, boot_seconds REAL,
            log_path TEXT, outputs TEXT NOT NULL DEFAULT '{}', changes TEXT NOT NULL DEFAULT '[]', detail TEXT,
            PRIMARY KEY (run_id, step_id));
        INSERT INTO runs VALUES ('old-run', 'p', 'p.yaml', '/w', 'succeeded', 1.0, 1.0, 2.0, 0, NULL, 'bob')
    """
    url = store_backend.url(tmp_path)
    if url is None:
        db = sqlite3.connect(tmp_path / "lg.db")
        db.executescript(version_1 + "; PRAGMA user_version=1;")
        db.close()
    else:  # the same version-1 tables, in PostgreSQL's types as its store reads portable DDL
        with psycopg.connect(url, autocommit=True) as db:
            for statement in version_1.split(";"):
                db.execute(ddl(statement).encode())
            db.execute(b"CREATE TABLE lg_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL)")
            db.execute(b"INSERT INTO lg_schema VALUES (1, 1)")
    store = store_backend.open(tmp_path)
    assert store.run("old-run").status == "succeeded" and store.run("old-run").pid is None
    # the new columns exist
    store.connection.execute("UPDATE steps SET grade = '{}', effects_grade = '{}', security = '{}', vm = '{}'")


def test_claim_takes_over_a_paused_or_abandoned_run_and_refuses_a_finished_or_live_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_backend: StoreBackend) -> None:
    store = store_backend.open(tmp_path)
    run = store.create_run("demo", tmp_path, tmp_path, "alice", [("a", "A")])
    store.start_run(run.id)
    store.pause(run.id, "a.before", waiting=False)
    claimed = store.claim(run.id, "bob")
    assert (claimed.status, claimed.pid) == ("running", os.getpid())
    assert [(r.kind, r.data) for r in store.audit_log.records()][-1] == ("run.resumed", {"by": "bob"})
    parent = psutil.Process(os.getppid())  # alive, and not this process: another lg running the run
    store.connection.execute("UPDATE runs SET pid = ?, pid_started = ? WHERE id = ?",
                             (parent.pid, parent.create_time(), run.id))
    with pytest.raises(InvalidInput, match=f"still being run by lg process {parent.pid}"):
        store.claim(run.id, "bob")
    store.connection.execute("UPDATE runs SET pid = ? WHERE id = ?", (2**22 + 17, run.id))  # that lg died
    assert store.claim(run.id, "bob").pid == os.getpid()
    stale = store.run(run.id)
    store.pause(run.id, "a.before", waiting=False)  # meanwhile, elsewhere
    monkeypatch.setattr(store, "run", lambda run_id: stale)
    with pytest.raises(InvalidInput, match="taken over by another lg process just now"):
        store.claim(run.id, "bob")
    monkeypatch.undo()
    store.claim(run.id, "bob")
    store.finish_run(run.id, RunStatus.SUCCEEDED, 0, None)
    with pytest.raises(InvalidInput, match="already finished"):
        store.claim(run.id, "bob")
