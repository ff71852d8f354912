"""Durable run records in SQLite (WAL): runs, their steps, timings, accelerator, image digest, exit codes, logs.

SQLite gives us atomic, crash-safe transitions and safe concurrent readers (`lg status` while `lg run` writes)
for free. A database that cannot be read is reported, never silently replaced.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.runs.audit import AuditLog, AuditRecord

SCHEMA_VERSION = 3
_MIGRATIONS = {  # from version N to N+1
    1: ("ALTER TABLE steps ADD COLUMN grade TEXT", "ALTER TABLE steps ADD COLUMN effects_grade TEXT"),
    2: ("ALTER TABLE runs ADD COLUMN pid INTEGER", "ALTER TABLE runs ADD COLUMN pid_started REAL"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    pipeline_path TEXT NOT NULL,
    workspace TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    error TEXT,
    initiator TEXT NOT NULL,
    pid INTEGER,
    pid_started REAL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    accelerator TEXT,
    image_digest TEXT,
    boot_seconds REAL,
    log_path TEXT,
    outputs TEXT NOT NULL DEFAULT '{}',
    changes TEXT NOT NULL DEFAULT '[]',
    detail TEXT,
    grade TEXT,
    effects_grade TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
"""

RUN_STATUSES = ("pending", "running", "succeeded", "failed", "blocked", "interrupted", "cancelled")
# blocked: a gate the step reached before running; held: its effects need review (nothing was applied)
STEP_STATUSES = ("pending", "running", "succeeded", "failed", "skipped", "timed_out", "interrupted", "blocked",
                 "held")


@dataclass(frozen=True)
class RunRecord:
    id: str
    pipeline: str
    pipeline_path: str
    workspace: str
    status: str
    created: float
    started: float | None
    finished: float | None
    exit_code: int | None
    error: str | None
    initiator: str
    pid: int | None = None  # the lg process running it
    pid_started: float | None = None  # that process's start time, so a reused pid is not mistaken for it

    @property
    def abandoned(self) -> bool:
        """Marked running, but the lg process running it is gone (killed with -9, or the machine restarted)."""
        if self.status != "running" or self.pid is None:
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - (self.pid_started or 0)) > 1.0
        except psutil.Error:
            return True

    @property
    def shown_status(self) -> str:
        return f"abandoned (lg process {self.pid} is gone)" if self.abandoned else self.status


@dataclass(frozen=True)
class StepRecord:
    run_id: str
    step_id: str
    position: int
    name: str
    status: str
    attempts: int
    started: float | None
    finished: float | None
    exit_code: int | None
    accelerator: str | None
    image_digest: str | None
    boot_seconds: float | None
    log_path: str | None
    outputs: dict[str, str]
    changes: list[dict[str, Any]]
    detail: str | None
    grade: dict[str, Any] | None = None
    effects_grade: dict[str, Any] | None = None

    @property
    def duration(self) -> float | None:
        return self.finished - self.started if self.started and self.finished else None


def new_run_id() -> str:
    """Sortable by time, unique enough for one host: 20261124-191530-9f2c."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


class RunStore:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "lg.db"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise EnvironmentUnfit(f"cannot open the state database {self.path}: {error}",
                                   fix="check the state_dir in lg.yaml (or LG_STATE_DIR) is writable") from error
        self._db.row_factory = sqlite3.Row
        self._init_schema()
        self.audit_log = AuditLog(self._db, state_dir)

    def _init_schema(self) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise EnvironmentUnfit(f"{self.path} was written by a newer lg (schema {version})",
                                       fix="upgrade lg, or point LG_STATE_DIR elsewhere")
            if version == 0:
                with self.transaction() as db:
                    # One statement at a time: executescript() would commit our transaction half-way.
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            for step in range(max(version, 1), SCHEMA_VERSION) if version else ():
                with self.transaction() as db:
                    for statement in _MIGRATIONS[step]:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={step + 1}")
        except sqlite3.DatabaseError as error:
            raise EnvironmentUnfit(
                f"the state database {self.path} is unreadable ({error}); it was left as it is",
                fix="move it aside to keep it for inspection; lg then starts a new one",
            ) from error

    def audit(self, kind: str, run_id: str | None, **data: Any) -> AuditRecord:
        """Append an audit record in its own transaction."""
        with self.transaction():
            record = self.audit_log.append(kind, run_id, data)
        self.audit_log.write_head(record)
        return record

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- runs --------------------------------------------------------------------------------------------

    def create_run(self, pipeline: str, pipeline_path: Path, workspace: Path, initiator: str,
                   steps: list[tuple[str, str]]) -> RunRecord:
        run_id = new_run_id()
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, pipeline, pipeline_path, workspace, status, created, initiator, pid,"
                " pid_started) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (run_id, pipeline, str(pipeline_path), str(workspace), now, initiator, os.getpid(),
                 psutil.Process().create_time()),
            )
            db.executemany(
                "INSERT INTO steps (run_id, step_id, position, name, status) VALUES (?, ?, ?, ?, 'pending')",
                [(run_id, step_id, position, name) for position, (step_id, name) in enumerate(steps)],
            )
            record = self.audit_log.append("run.created", run_id, {
                "pipeline": pipeline, "file": str(pipeline_path), "workspace": str(workspace),
                "initiator": initiator, "steps": [step_id for step_id, _ in steps],
            })
        self.audit_log.write_head(record)
        return self.run(run_id)

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._update("runs", "id = ?", (run_id,), fields)

    def run(self, run_id: str) -> RunRecord:
        """A run by id or unique id prefix (`lg status 2026112`)."""
        rows = self._db.execute(
            "SELECT * FROM runs WHERE id = ? OR id LIKE ? ORDER BY id LIMIT 2", (run_id, f"{run_id}%")
        ).fetchall()
        exact = [row for row in rows if row["id"] == run_id]
        if exact:
            return RunRecord(**dict(exact[0]))
        if len(rows) == 1:
            return RunRecord(**dict(rows[0]))
        if not rows:
            raise InvalidInput(f"no run {run_id!r} (see `lg runs`)")
        raise InvalidInput(f"run id prefix {run_id!r} is ambiguous")

    def runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [RunRecord(**dict(row)) for row in rows]

    # --- steps -------------------------------------------------------------------------------------------

    def update_step(self, run_id: str, step_id: str, **fields: Any) -> None:
        for key in ("outputs", "changes", "grade", "effects_grade"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        self._update("steps", "run_id = ? AND step_id = ?", (run_id, step_id), fields)

    def steps(self, run_id: str) -> list[StepRecord]:
        rows = self._db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()
        records = []
        for row in rows:
            data = dict(row)
            for key in ("outputs", "changes", "grade", "effects_grade"):
                data[key] = json.loads(data[key]) if data[key] is not None else None
            records.append(StepRecord(**data))
        return records

    def _update(self, table: str, where: str, key: tuple[str, ...], fields: dict[str, Any]) -> None:
        if not fields:
            return
        # Column names come from our own keyword arguments, never from user input.
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE {table} SET {assignments} WHERE {where}", (*fields.values(), *key))  # noqa: S608

    def run_dir(self, run_id: str) -> Path:
        path = self.state_dir / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path
