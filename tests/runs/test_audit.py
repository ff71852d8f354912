"""The audit chain detects every kind of tampering and says where."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lg.runs.store import RunStore


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path)
    for index in range(5):
        store.audit("step.finished", "run-1", step=f"s{index}", status="succeeded")
    return store


def raw(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "lg.db", isolation_level=None)


def messages(store: RunStore) -> list[str]:
    return [f"{p.seq}: {p.message}" for p in store.audit_log.verify()]


def test_an_untouched_chain_verifies(store: RunStore) -> None:
    assert messages(store) == []
    records = list(store.audit_log.records())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[1].prev == records[0].hash


def test_an_edited_record_is_found(store: RunStore, tmp_path: Path) -> None:
    raw(tmp_path).execute("""UPDATE audit SET data = '{"status":"failed","step":"s2"}' WHERE seq = 3""")
    assert messages(store) == ["3: record 3 (step.finished) was edited: its content does not match its hash"]


def test_a_deleted_record_is_found(store: RunStore, tmp_path: Path) -> None:
    raw(tmp_path).execute("DELETE FROM audit WHERE seq = 2")
    found = messages(store)
    assert "3: record 2 is missing (found 3 next): records were deleted or renumbered" in found


def test_an_inserted_record_is_found(store: RunStore, tmp_path: Path) -> None:
    db = raw(tmp_path)
    db.execute("UPDATE audit SET seq = -(seq + 1) WHERE seq >= 3")  # make room, as an attacker would
    db.execute("UPDATE audit SET seq = -seq WHERE seq < 0")
    db.execute("INSERT INTO audit (seq, ts, kind, run_id, data, prev, hash) "
               "SELECT 3, ts, kind, run_id, data, prev, hash FROM audit WHERE seq = 2")
    assert any("does not follow the record before it" in m for m in messages(store))


def test_reordered_records_are_found(store: RunStore, tmp_path: Path) -> None:
    db = raw(tmp_path)
    db.execute("UPDATE audit SET seq = 100 WHERE seq = 2")
    db.execute("UPDATE audit SET seq = 2 WHERE seq = 3")
    db.execute("UPDATE audit SET seq = 3 WHERE seq = 100")
    assert any(m.startswith("2: record 2 does not follow") for m in messages(store))


def test_records_deleted_from_the_end_are_found(store: RunStore, tmp_path: Path) -> None:
    raw(tmp_path).execute("DELETE FROM audit WHERE seq >= 4")
    assert messages(store) == ["4: records 4 to 5 were deleted from the end"]


def test_a_rewritten_tail_is_found(store: RunStore, tmp_path: Path) -> None:
    # Rewrite the last record *and* its hash consistently: only the head anchor can tell.
    from lg.runs.audit import record_hash

    db = raw(tmp_path)
    seq, ts, kind, run_id, _, prev = db.execute(
        "SELECT seq, ts, kind, run_id, data, prev FROM audit WHERE seq = 5").fetchone()
    data = '{"status":"failed"}'
    db.execute("UPDATE audit SET data = ?, hash = ? WHERE seq = 5",
               (data, record_hash(seq, ts, kind, run_id, data, prev)))
    assert messages(store) == ["5: the newest record 5 differs from the one recorded in the head"]


def test_a_missing_head_is_reported(store: RunStore, tmp_path: Path) -> None:
    (tmp_path / "audit.head").unlink()
    assert "cannot rule out" in messages(store)[0]
