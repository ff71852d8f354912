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

SCHEMA_VERSION = 7

_GATES = """
CREATE TABLE IF NOT EXISTS gates (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    gate_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    digest TEXT NOT NULL,
    subject TEXT NOT NULL,
    card TEXT NOT NULL,
    rules TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    decided REAL,
    outcome TEXT,
    PRIMARY KEY (run_id, gate_id)
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id TEXT NOT NULL,
    gate_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    approver TEXT NOT NULL,
    verdict TEXT NOT NULL,
    comment TEXT,
    payload TEXT NOT NULL,
    signature TEXT,
    signed_by TEXT,
    ts REAL NOT NULL,
    PRIMARY KEY (run_id, gate_id, digest, approver),
    FOREIGN KEY (run_id, gate_id) REFERENCES gates(run_id, gate_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX IF NOT EXISTS decisions_signature ON decisions(signature) WHERE signature IS NOT NULL;
CREATE INDEX IF NOT EXISTS gates_open ON gates(status)
"""

_MIGRATIONS = {  # from version N to N+1
    1: ("ALTER TABLE steps ADD COLUMN grade TEXT", "ALTER TABLE steps ADD COLUMN effects_grade TEXT"),
    2: ("ALTER TABLE runs ADD COLUMN pid INTEGER", "ALTER TABLE runs ADD COLUMN pid_started REAL"),
    3: ("ALTER TABLE runs ADD COLUMN pipeline_sha256 TEXT", *_GATES.split(";")),
    4: ("ALTER TABLE steps ADD COLUMN security TEXT",),
    5: ("ALTER TABLE steps ADD COLUMN vm TEXT",),
    6: ("ALTER TABLE runs ADD COLUMN inputs TEXT",),
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
    pid_started REAL,
    pipeline_sha256 TEXT,
    inputs TEXT
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
    security TEXT,
    vm TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
""" + _GATES

RUN_STATUSES = ("pending", "running", "awaiting_approval", "succeeded", "failed", "rejected", "expired",
                "interrupted", "cancelled")
FINISHED_RUN_STATUSES = frozenset({"succeeded", "failed", "rejected", "expired", "cancelled"})
# awaiting_approval: a gate before the step runs is open; held: the step ran, its effects wait for review
# (stored, not applied); applying: approved effects are being written to the workspace
STEP_STATUSES = ("pending", "running", "succeeded", "failed", "skipped", "timed_out", "interrupted",
                 "awaiting_approval", "held", "applying", "rejected", "expired", "cancelled")


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
    pipeline_sha256: str | None = None  # of the pipeline file as it was run; a resume refuses a changed file
    # Every file the run's inputs were bound from, as [{kind, path, sha256}] (lg.inputs); None before schema 7
    inputs: list[dict[str, Any]] | None = None

    @property
    def finished_for_good(self) -> bool:
        return self.status in FINISHED_RUN_STATUSES

    @property
    def abandoned(self) -> bool:
        """Marked running, but the lg process running it is gone (killed with -9, or the machine restarted)."""
        return self.status in ("running", "pending") and not self.process_alive

    @property
    def process_alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            return abs(psutil.Process(self.pid).create_time() - (self.pid_started or 0)) <= 1.0
        except psutil.Error:
            return False

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
    security: dict[str, Any] | None = None  # what confined the step in its VM (lg.security.state)
    vm: dict[str, Any] | None = None  # where its VM came from: warm pool, restored snapshot or cold boot

    @property
    def duration(self) -> float | None:
        return self.finished - self.started if self.started and self.finished else None


def _run_record(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    data["inputs"] = json.loads(data["inputs"]) if data["inputs"] is not None else None
    return RunRecord(**data)


JSON_COLUMNS = ("outputs", "changes", "grade", "effects_grade", "security", "vm")


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

    def _init_schema(self) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self.audit_log = AuditLog(self._db, self.state_dir)
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
                    for statement in filter(str.strip, _MIGRATIONS[step]):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version={step + 1}")
        except sqlite3.DatabaseError as error:
            raise EnvironmentUnfit(
                f"the state database {self.path} is unreadable ({error}); it was left as it is",
                fix="move it aside to keep it for inspection; lg then starts a new one",
            ) from error

    def audit(self, kind: str, run_id: str | None, **data: Any) -> AuditRecord:
        """Append an audit record in its own transaction (inside an open one, as part of it)."""
        if self._db.in_transaction:
            return self.audit_log.append(kind, run_id, data)
        with self.transaction():
            return self.audit_log.append(kind, run_id, data)

    def require_intact_audit(self) -> None:
        """Refuse to add to an audit log that was tampered with: appending would bury the evidence under valid
        records. Commands that change state call this first."""
        problems = self.audit_log.verify()
        if problems:
            first = problems[0]
            raise EnvironmentUnfit(
                f"the audit log in {self.path} is damaged ({first.message}; {len(problems)} problem(s)); "
                "refusing to add to it",
                fix="`lg audit verify` lists every problem; keep the database as evidence, move the state "
                    "directory aside, and start a new one")

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For modules that keep their own tables in this database (gates): one connection, one transaction."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue up instead of failing half-way). Audit records
        appended inside it commit with it, and the head moves only once they are durable. Nested use joins
        the outer transaction."""
        if self._db.in_transaction:
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        self.audit_log.unwritten_head = None
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            self.audit_log.unwritten_head = None
            raise
        self._db.execute("COMMIT")
        head, self.audit_log.unwritten_head = self.audit_log.unwritten_head, None
        if head is not None:
            self.audit_log.write_head(head)

    # --- runs --------------------------------------------------------------------------------------------

    def create_run(self, pipeline: str, pipeline_path: Path, workspace: Path, initiator: str,
                   steps: list[tuple[str, str]], pipeline_sha256: str | None = None,
                   inputs: list[dict[str, Any]] | None = None) -> RunRecord:
        run_id = new_run_id()
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, pipeline, pipeline_path, workspace, status, created, initiator, pid,"
                " pid_started, pipeline_sha256, inputs) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)",
                (run_id, pipeline, str(pipeline_path), str(workspace), now, initiator, os.getpid(),
                 psutil.Process().create_time(), pipeline_sha256, json.dumps(inputs) if inputs is not None else None),
            )
            db.executemany(
                "INSERT INTO steps (run_id, step_id, position, name, status) VALUES (?, ?, ?, ?, 'pending')",
                [(run_id, step_id, position, name) for position, (step_id, name) in enumerate(steps)],
            )
            self.audit_log.append("run.created", run_id, {
                "pipeline": pipeline, "file": str(pipeline_path), "workspace": str(workspace),
                "initiator": initiator, "steps": [step_id for step_id, _ in steps], "pipeline_sha256": pipeline_sha256,
                **({"inputs": inputs} if inputs is not None else {}),
            })
        return self.run(run_id)

    def accept_inputs(self, run_id: str, inputs: list[dict[str, Any]], changes: list[dict[str, Any]],
                      by: str) -> None:
        """The run goes on with inputs that changed since it started, because `by` accepted `changes`."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET inputs = ? WHERE id = ?", (json.dumps(inputs), run_id))
            self.audit_log.append("run.inputs_accepted", run_id, {"by": by, "changes": changes})

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._update("runs", "id = ?", (run_id,), fields)

    def run(self, run_id: str) -> RunRecord:
        """A run by id or unique id prefix (`lg status 2026112`)."""
        rows = self._db.execute(
            "SELECT * FROM runs WHERE id = ? OR id LIKE ? ORDER BY id LIMIT 2", (run_id, f"{run_id}%")
        ).fetchall()
        exact = [row for row in rows if row["id"] == run_id]
        if exact:
            return _run_record(exact[0])
        if len(rows) == 1:
            return _run_record(rows[0])
        if not rows:
            raise InvalidInput(f"no run {run_id!r} (see `lg runs`)")
        raise InvalidInput(f"run id prefix {run_id!r} is ambiguous")

    def runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_run_record(row) for row in rows]

    # --- steps -------------------------------------------------------------------------------------------

    def update_step(self, run_id: str, step_id: str, **fields: Any) -> None:
        for key in JSON_COLUMNS:
            if key in fields:
                fields[key] = json.dumps(fields[key])
        self._update("steps", "run_id = ? AND step_id = ?", (run_id, step_id), fields)

    def step(self, run_id: str, step_id: str) -> StepRecord:
        for record in self.steps(run_id):
            if record.step_id == step_id:
                return record
        raise InvalidInput(f"run {run_id} has no step {step_id!r}")

    def steps(self, run_id: str) -> list[StepRecord]:
        rows = self._db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()
        records = []
        for row in rows:
            data = dict(row)
            for key in JSON_COLUMNS:
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
