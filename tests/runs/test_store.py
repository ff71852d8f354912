from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.runs.store import RunStore


def test_runs_and_steps_round_trip(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "state")
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("a", "A"), ("b", "B")])
    assert run.status == "pending" and run.initiator == "alice"
    store.update_run(run.id, status="running", started=1.0)
    store.update_step(run.id, "a", status="succeeded", outputs={"v": "1"},
                      changes=[{"path": "x", "kind": "created"}], exit_code=0)
    assert store.run(run.id).status == "running"
    a, b = store.steps(run.id)
    assert (a.status, a.outputs, a.changes[0]["path"], b.status) == ("succeeded", {"v": "1"}, "x", "pending")
    assert store.run(run.id[:15]).id == run.id  # unique prefixes work
    # a second process sees committed state (WAL)
    other = RunStore(tmp_path / "state")
    assert other.runs()[0].id == run.id


def test_unknown_and_ambiguous_run_ids(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(InvalidInput, match="no run 'nope'"):
        store.run("nope")
    store.create_run("a", tmp_path, tmp_path, "x", [])
    store.create_run("b", tmp_path, tmp_path, "x", [])
    with pytest.raises(InvalidInput, match="ambiguous"):
        store.run("2")


def test_a_corrupt_database_is_reported_and_kept(tmp_path: Path) -> None:
    (tmp_path / "lg.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(EnvironmentUnfit, match="unreadable"):
        RunStore(tmp_path)
    assert (tmp_path / "lg.db").read_bytes().startswith(b"this is not a database")


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    RunStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "lg.db")
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(EnvironmentUnfit, match="newer lg"):
        RunStore(tmp_path)
