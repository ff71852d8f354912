"""`lg runs`, `lg status`, `lg logs`, `lg audit` read the durable records a run leaves."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.runs.states import RunStatus, StepStatus
from lg.runs.store import RunStore


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[RunStore, str]:
    monkeypatch.setenv("LG_STATE_DIR", str(tmp_path / "state"))
    store = RunStore(tmp_path / "state")
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("build", "Build"), ("test", "")])
    log = store.run_dir(run.id) / "build.log"
    log.write_text("compiling\ntoken=***\n")
    # The steps' records as a finished run leaves them (written directly: only the run's two audit records count here)
    store.connection.execute(
        "UPDATE steps SET status = ?, exit_code = 0, started = 1.0, finished = 3.5, accelerator = 'tcg',"
        " image_digest = ?, log_path = ?, boot_seconds = 4.2 WHERE run_id = ? AND step_id = 'build'",
        (StepStatus.SUCCEEDED, "ab" * 32, str(log), run.id))
    store.connection.execute("UPDATE steps SET status = ?, detail = 'skipped: if: false' WHERE run_id = ?"
                             " AND step_id = 'test'", (StepStatus.SKIPPED, run.id))
    store.start_run(run.id)
    store.finish_run(run.id, RunStatus.SUCCEEDED, 0, None)
    return store, run.id


def test_runs_lists_newest_first(lg: Callable[..., Any], recorded: tuple[RunStore, str]) -> None:
    _, run_id = recorded
    result = lg("runs")
    assert result.code == 0 and run_id in result.out and "succeeded" in result.out
    assert json.loads(lg("runs", "--json").out)[0]["id"] == run_id


def test_status_shows_steps(lg: Callable[..., Any], recorded: tuple[RunStore, str]) -> None:
    _, run_id = recorded
    result = lg("status", run_id[:15])
    assert result.code == 0
    assert "build" in result.out and "tcg" in result.out and "abababababab" in result.out
    assert "skipped: if: false" in result.out
    data = json.loads(lg("status", "--json", run_id).out)
    assert [s["status"] for s in data["steps"]] == ["succeeded", "skipped"]
    assert lg("status", "nope").code == 2


def test_logs(lg: Callable[..., Any], recorded: tuple[RunStore, str]) -> None:
    _, run_id = recorded
    assert lg("logs", run_id, "build").out == "compiling\ntoken=***\n"
    assert lg("logs", run_id, "nope").code == 2


def test_audit_verify_and_export(lg: Callable[..., Any], recorded: tuple[RunStore, str], tmp_path: Path) -> None:
    assert lg("audit", "verify").out.startswith("audit log intact: 2 records")
    exported = json.loads(lg("audit", "export", "--json").out)
    assert [r["kind"] for r in exported] == ["run.created", "run.finished"]
    sqlite3.connect(tmp_path / "state" / "lg.db", isolation_level=None).execute(
        "UPDATE audit SET kind = 'run.cancelled' WHERE seq = 2")
    result = lg("audit", "verify")
    assert result.code == 1 and "record 2 (run.cancelled) was edited" in result.err
