"""The audit chain detects every kind of tampering and says where."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.runs.audit import GENESIS, AuditRecord, record_hash
from lg.runs.store import RunStore
from tests.stores import StoreBackend, delete_head, raw, state_env


@pytest.fixture
def store(tmp_path: Path, store_backend: StoreBackend) -> RunStore:
    store = store_backend.open(tmp_path)
    for index in range(5):
        store.audit("step.finished", "run-1", step=f"s{index}", status="succeeded")
    return store


def messages(store: RunStore) -> list[str]:
    return [f"{p.seq}: {p.message}" for p in store.audit_log.verify()]


def test_an_untouched_chain_verifies(store: RunStore) -> None:
    assert messages(store) == []
    records = list(store.audit_log.records())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[1].prev == records[0].hash


def test_an_edited_record_is_found(store: RunStore, tmp_path: Path) -> None:
    raw(store).execute("""UPDATE audit SET data = '{"status":"failed","step":"s2"}' WHERE seq = 3""")
    assert messages(store) == ["3: record 3 (step.finished) was edited: its content does not match its hash"]


def test_a_deleted_record_is_found(store: RunStore, tmp_path: Path) -> None:
    raw(store).execute("DELETE FROM audit WHERE seq = 2")
    found = messages(store)
    assert "3: record 2 is missing (found 3 next): records were deleted or renumbered" in found


def test_an_inserted_record_is_found(store: RunStore, tmp_path: Path) -> None:
    db = raw(store)
    db.execute("UPDATE audit SET seq = -(seq + 1) WHERE seq >= 3")  # make room, as an attacker would
    db.execute("UPDATE audit SET seq = -seq WHERE seq < 0")
    db.execute("INSERT INTO audit (seq, ts, kind, run_id, data, prev, hash) "
               "SELECT 3, ts, kind, run_id, data, prev, hash FROM audit WHERE seq = 2")
    assert any("does not follow the record before it" in m for m in messages(store))


def test_reordered_records_are_found(store: RunStore, tmp_path: Path) -> None:
    db = raw(store)
    db.execute("UPDATE audit SET seq = 100 WHERE seq = 2")
    db.execute("UPDATE audit SET seq = 2 WHERE seq = 3")
    db.execute("UPDATE audit SET seq = 3 WHERE seq = 100")
    assert any(m.startswith("2: record 2 does not follow") for m in messages(store))


def test_records_deleted_from_the_end_are_found(store: RunStore, tmp_path: Path) -> None:
    raw(store).execute("DELETE FROM audit WHERE seq >= 4")
    assert messages(store) == ["4: records 4 to 5 were deleted from the end"]


def test_a_rewritten_tail_is_found(store: RunStore, tmp_path: Path) -> None:
    # Rewrite the last record *and* its hash consistently: only the head anchor can tell.
    db = raw(store)
    seq, ts, kind, run_id, _, prev = db.execute(
        "SELECT seq, ts, kind, run_id, data, prev FROM audit WHERE seq = 5").fetchone()
    data = '{"status":"failed"}'
    db.execute("UPDATE audit SET data = ?, hash = ? WHERE seq = 5",
               (data, record_hash(seq, ts, kind, run_id, data, prev)))
    assert messages(store) == ["5: the newest record 5 differs from the one recorded in the head"]


def test_a_missing_head_is_reported(store: RunStore, tmp_path: Path) -> None:
    delete_head(store)
    assert "cannot rule out" in messages(store)[0]


# --- the state against the log (issue #20 item 6) ---------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path, store_backend: StoreBackend) -> tuple[RunStore, str, str]:
    """Two runs: one finished (failed), one paused at a gate someone approved half of (count 2)."""
    from lg.runs.gates import GateRules, GateStore
    from lg.runs.states import RunStatus

    store = store_backend.open(tmp_path / "state")
    done = store.create_run("done", tmp_path / "p.yaml", tmp_path, "alice", [("a", "A")])
    store.start_run(done.id)
    store.finish_run(done.id, RunStatus.FAILED, 1, "step(s) failed: a")
    paused = store.create_run("paused", tmp_path / "p.yaml", tmp_path, "alice", [("ship", "Ship")])
    gates = GateStore(store)
    gate = gates.open(paused.id, "ship", "explicit", {"run": paused.id}, {"gate": "ship.before"}, GateRules(count=2))
    store.start_run(paused.id)
    store.pause(paused.id, gate.gate_id, waiting=False)
    from lg.approvals.decide import decide

    decide(gates, store.run(paused.id), gate, "approve", None, user="bob")
    assert store.verify_audit() == []
    return store, done.id, paused.id


def rechain(store: RunStore, keep: Callable[[AuditRecord], bool]) -> None:
    """Rewrite the log with only the records `keep` keeps, as a valid chain with its head: what someone who
    knows the format can do with write access to the state directory. The chain alone then says nothing."""
    kept = [record for record in store.audit_log.records() if keep(record)]
    db = raw(store)
    db.execute("DELETE FROM audit")
    delete_head(store)
    prev = GENESIS
    for seq, record in enumerate(kept, 1):
        data = json.dumps(record.data, sort_keys=True, separators=(",", ":"), default=str)
        digest = record_hash(seq, record.ts, record.kind, record.run_id, data, prev)
        db.execute("INSERT INTO audit (seq, ts, kind, run_id, data, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (seq, record.ts, record.kind, record.run_id, data, prev, digest))
        prev = digest
        store.audit_log.write_head(AuditRecord(seq, record.ts, record.kind, record.run_id, record.data, prev,
                                               digest))
    assert store.audit_log.verify() == []  # the chain is intact: only the state can tell


def found(store: RunStore) -> list[str]:
    return [problem.message for problem in store.verify_audit()]


def test_every_record_and_the_head_deleted_while_runs_remain_fails_verify(
        state: tuple[RunStore, str, str], lg: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    store, done, paused = state
    raw(store).execute("DELETE FROM audit")
    delete_head(store)
    assert store.audit_log.verify() == []  # the chain of nothing is intact; this passed `lg audit verify` before
    problems = found(store)
    assert any("the audit log is empty" in p and "holds 2 run(s)" in p for p in problems)
    assert any(f"run {done} has no run.created record" in p for p in problems)
    assert any(f"run {paused} has no run.created record" in p for p in problems)
    state_env(monkeypatch, store)
    result = lg("audit", "verify")
    assert result.code == 1 and f"run {done} has no run.created record" in result.err
    refused = lg("cancel", paused)  # nothing is added to a log that lost its records
    assert refused.code == 5 and "refusing to add to it" in refused.err


def test_a_run_whose_records_were_cut_out_of_a_rebuilt_chain_is_found(state: tuple[RunStore, str, str]) -> None:
    store, done, _ = state
    rechain(store, lambda record: record.run_id != done)
    assert found(store) == [f"run {done} has no run.created record: its audit records were deleted, or the run "
                            "was added behind lg's back"]


def test_a_finished_run_relabelled_or_its_ending_removed_is_found(state: tuple[RunStore, str, str]) -> None:
    store, done, _ = state
    raw(store).execute("UPDATE runs SET status = 'succeeded' WHERE id = ?", (done,))
    assert found(store) == [f"run {done} is succeeded but its last record says failed: audit records were "
                            "deleted or the run was edited"]
    raw(store).execute("UPDATE runs SET status = 'failed' WHERE id = ?", (done,))
    rechain(store, lambda record: record.kind != "run.finished")
    assert found(store) == [f"run {done} is failed but no record says it ended: audit records were deleted or "
                            "the run was edited"]


def test_gates_and_decisions_without_their_records_are_found(state: tuple[RunStore, str, str]) -> None:
    store, _, paused = state
    rechain(store, lambda record: record.kind not in ("gate.opened", "gate.decision"))
    assert sorted(found(store)) == [
        f"gate ship.before of run {paused} has no gate.opened record: audit records were deleted, or the gate was "
        "added behind lg's back",
        f"the decision of bob on gate ship.before of run {paused} has no gate.decision record: audit records were "
        "deleted or the decision added"]


def test_a_run_deleted_from_the_tables_is_found(state: tuple[RunStore, str, str]) -> None:
    store, done, _ = state
    raw(store).execute("DELETE FROM runs WHERE id = ?", (done,))
    assert found(store) == [f"run {done} is on record (run.created) but not in the database: it was deleted"]
