"""Durable run records: runs, their steps, timings, accelerator, image digest, exit codes, logs.

In SQLite (WAL, lg.db in the state directory; the default) or in PostgreSQL (`state: postgresql://...` in
lg.yaml, LG_STATE_URL), with the same tables, migrations, queries and audit chain (lg.runs.dialect says what
differs). Both give atomic, crash-safe transitions and safe concurrent readers (`lg status` while `lg run`
writes). A database that cannot be read is reported, never silently replaced.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from lg.errors import EnvironmentUnfit, ExitCode, InternalError, InvalidInput, RunCancelled
from lg.model import FileChange
from lg.runs import crosscheck
from lg.runs.audit import AuditLog, AuditRecord, Problem
from lg.runs.database import Connection, StateDamaged, connect, lock_of, path_of, reported, unreadable_row
from lg.runs.dialect import Dialect, Postgres, Sqlite
from lg.runs.gates import GateStore
from lg.runs.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION
from lg.runs.states import (
    ENDED_STEPS,
    EXECUTING_RUNS,
    FAILED_STEPS,
    FINISHED_RUNS,
    RUNS,
    STEPS,
    WAITING_STEPS,
    AnyStatus,
    GateStatus,
    IllegalTransition,
    Machine,
    RunStatus,
    StepStatus,
)


class CancelRequested(RunCancelled):
    """A transition the run's lg process asked for after `lg cancel` asked it to stop: refused, nothing changed.
    The engine then cancels the run (lg.runner.engine)."""


@dataclass(frozen=True)
class RunRecord:
    id: str
    pipeline: str
    pipeline_path: str
    workspace: str
    status: RunStatus
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
    # `lg cancel` of a live run, as {reason, by, at}: the run's lg process stops at once (lg.runner.interrupts)
    # and the store refuses it any further progress (see _refuse_progress)
    cancel_requested: dict[str, Any] | None = None
    # The values of the pipeline's `inputs:` the run was bound with (`lg run --input`, else the defaults);
    # `lg resume` binds the same ones. None before schema 9.
    input_values: dict[str, Any] | None = None

    @property
    def finished_for_good(self) -> bool:
        return self.status in FINISHED_RUNS

    @property
    def abandoned(self) -> bool:
        """Marked running, but the lg process running it is gone (killed with -9, or the machine restarted)."""
        return self.status in EXECUTING_RUNS and not self.process_alive

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
        return f"abandoned (lg process {self.pid} is gone)" if self.abandoned else self.status.value


@dataclass(frozen=True)
class StepRecord:
    run_id: str
    step_id: str
    position: int
    name: str
    status: StepStatus
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


class Attempt(Protocol):
    """What one attempt of a step leaves in its record besides a status (lg.runner.step_vm.AttemptResult)."""

    @property
    def exit_code(self) -> int | None: ...
    @property
    def detail(self) -> str | None: ...
    @property
    def accelerator(self) -> str | None: ...
    @property
    def image_digest(self) -> str | None: ...
    @property
    def boot_seconds(self) -> float | None: ...
    @property
    def outputs(self) -> Mapping[str, str]: ...
    @property
    def changes(self) -> Sequence[FileChange]: ...
    @property
    def security(self) -> Mapping[str, Any] | None: ...
    @property
    def vm(self) -> Mapping[str, Any] | None: ...


JSON_COLUMNS = ("outputs", "changes", "grade", "effects_grade", "security", "vm")
# What the transitions may write besides the status; anything else is a bug (see _write).
_WRITABLE = {
    "runs": frozenset({"status", "started", "finished", "exit_code", "error", "pid", "pid_started",
                       "cancel_requested"}),
    "steps": frozenset({"status", "attempts", "started", "finished", "exit_code", "accelerator", "image_digest",
                        "boot_seconds", "log_path", "detail", *JSON_COLUMNS}),
}


def new_run_id() -> str:
    """Sortable by time, with 32 random bits: 20261124-191530-9f2c41d0. create_run draws again on the rare
    collision (many runs a second share a store: parallel CI jobs on one server, a test's state machine)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(4)


class RunStore:
    """Runs, steps and (through lg.runs.gates) gates. Every change of status goes through one method below, which
    re-reads the current status in its transaction, checks the move against lg.runs.states, and writes its audit
    record(s) in that same transaction."""

    def __init__(self, state_dir: Path, url: str | None = None) -> None:
        """The store in `state_dir` (lg.db, SQLite), or, given a `postgresql://` URL, in that PostgreSQL database;
        local files (step logs, held effects: run_dir) stay under state_dir either way."""
        self.state_dir = state_dir
        self.url = url
        # For the SQLite store its file; for PostgreSQL a file that never exists (readers of lg.db, such as the
        # cancel watch of lg.runner.interrupts, find nothing there; the store itself refuses a cancelled run).
        self.path = state_dir / ("lg.db" if url is None else "lg.db.on-postgresql")
        self.where: Path | str = self.path  # what messages name: the file, or the URL without its password
        self.dialect: Dialect = Sqlite() if url is None else Postgres()
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = self._connect(url)
        except StateDamaged:
            raise
        except (OSError, sqlite3.Error) as error:
            raise EnvironmentUnfit(f"cannot open the state database {self.path}: {error}",
                                   fix="check the state_dir in lg.yaml (or LG_STATE_DIR) is writable") from error
        self.where = path_of(self._db)
        self._init_schema()

    def _connect(self, url: str | None) -> Connection:
        if url is not None:
            from lg.runs import postgres  # noqa: PLC0415 - psycopg only when PostgreSQL is chosen

            return postgres.connect(url, timeout=30)
        connection = connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        return connection

    def _database_errors(self) -> tuple[type[Exception], ...]:
        if self.url is None:
            return (sqlite3.DatabaseError,)
        import psycopg  # noqa: PLC0415

        return (psycopg.DatabaseError,)

    def _init_schema(self) -> None:
        try:
            with reported(self.path):
                self._migrate()
        except StateDamaged:
            raise
        except self._database_errors() as error:  # rolled back: nothing changed
            if "duplicate column" in str(error) or "already exists" in str(error):
                # A migration that cannot apply: the version in the file's header is not its tables' version.
                raise StateDamaged(self.where, f"{error}: its header's schema version does not match its tables"
                                   ) from error
            raise EnvironmentUnfit(f"cannot open the state database {self.where}: {error}",
                                   fix="check the state directory's disk space and permissions") from error

    def _migrate(self) -> None:
        if self.url is None:
            self.dialect.prepare(self._db)  # PRAGMAs, which SQLite will not change inside a transaction
            self.audit_log = AuditLog(self._db, self.state_dir, self.dialect)
        else:  # under the write lock: two processes creating the same tables at once would collide
            with lock_of(self._db):
                self.dialect.begin(self._db)
                try:
                    self.dialect.prepare(self._db)
                    self.audit_log = AuditLog(self._db, self.state_dir, self.dialect)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
        version = self._checked_version(self.dialect.schema_version(self._db))
        while version < SCHEMA_VERSION:
            with self.transaction() as db:
                # Read again under the write lock: another process may have migrated meanwhile.
                version = self._checked_version(self.dialect.schema_version(db))
                if version == 0:
                    # One statement at a time: executescript() would commit our transaction half-way.
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        db.execute(self.dialect.statement(statement))
                    version = SCHEMA_VERSION
                elif version < SCHEMA_VERSION:
                    for step in MIGRATIONS[version]:
                        statement = self.dialect.statement(step)
                        if statement.strip():
                            db.execute(statement)
                    version += 1
                self.dialect.set_schema_version(db, version)

    def _checked_version(self, version: int) -> int:
        if version < 0:
            raise StateDamaged(self.where, f"its header says schema version {version}")
        if version > SCHEMA_VERSION:
            raise EnvironmentUnfit(f"{self.where} was written by a newer lg (schema {version})",
                                   fix="upgrade lg, or point LG_STATE_DIR (LG_STATE_URL) elsewhere")
        return version

    def audit(self, kind: str, run_id: str | None, **data: Any) -> AuditRecord:
        """Append an audit record in its own transaction (inside an open one, as part of it)."""
        with lock_of(self._db):  # another thread's open transaction is not ours to join
            if self._db.in_transaction:
                return self.audit_log.append(kind, run_id, data)
            with self.transaction():
                return self.audit_log.append(kind, run_id, data)

    def require_intact_audit(self) -> None:
        """Refuse to add to an audit log that was tampered with: appending would bury the evidence under valid
        records. Commands that change state call this first. A file with damaged pages is refused before that,
        whatever the pages hold: writing into it could spread the damage to what is still sound."""
        self.check_integrity()
        problems = self.verify_audit()
        if problems:
            first = problems[0]
            raise EnvironmentUnfit(
                f"the audit log in {self.where} is damaged ({first.message}; {len(problems)} problem(s)); "
                "refusing to add to it",
                fix="`lg audit verify` lists every problem; keep the database as evidence, move the state "
                    "directory aside, and start a new one")

    def verify_audit(self) -> list[Problem]:
        """The audit chain (lg.runs.audit), and the runs, gates and decisions in the tables against it
        (lg.runs.crosscheck): a log emptied together with its head is an intact chain, not an intact log."""
        problems = self.audit_log.verify()
        records = list(self.audit_log.records())
        if not records and not self.audit_log.head_exists():
            runs = self._db.execute("SELECT count(*) FROM runs").fetchone()[0]
            if runs:
                problems.append(Problem(None, f"the audit log is empty and {self.audit_log.head_name} is missing, "
                                              f"but the database holds {runs} run(s): records and head were "
                                              "deleted"))
        return problems + crosscheck.check(self._db, records)

    def check_integrity(self) -> None:
        """SQLite's own check of every page and index (`PRAGMA quick_check`: linear in the file's size, about
        as costly as verifying the audit chain, which these commands do anyway); PostgreSQL has none."""
        found = self.dialect.damage(self._db)
        if found:
            raise StateDamaged(self.where, "; ".join(found))

    def close(self) -> None:
        self._db.close()

    def gate_store(self, clock: Callable[[], float] = time.time) -> GateStore:
        """The gates of this store (lg.runs.ports.RunStoreLike: a server's store hands out its own)."""
        return GateStore(self, clock)

    @property
    def connection(self) -> Connection:
        """For modules that keep their own tables in this database (gates): one connection, one transaction."""
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One write transaction (holding the store's write lock from its start, lg.runs.dialect: writers queue
        up instead of failing half-way). Audit records appended inside it commit with it, and the head moves
        only once they are durable (PostgreSQL's head row: in the transaction itself). Nested use joins the
        outer transaction (in the same thread: the connection's lock, held throughout, keeps the other threads
        of the run out until it is committed and the audit head moved)."""
        with lock_of(self._db):
            if self._db.in_transaction:
                yield self._db
                return
            self.dialect.begin(self._db)
            self.audit_log.unwritten_head = None
            try:
                yield self._db
                if self.audit_log.head_in_database and self.audit_log.unwritten_head is not None:
                    self.audit_log.write_head(self.audit_log.unwritten_head)
            except BaseException:
                self._db.execute("ROLLBACK")
                self.audit_log.unwritten_head = None
                raise
            self._db.execute("COMMIT")
            head, self.audit_log.unwritten_head = self.audit_log.unwritten_head, None
            if head is not None and not self.audit_log.head_in_database:
                self.audit_log.write_head(head)

    # --- runs: reading ------------------------------------------------------------------------------------

    def run(self, run_id: str) -> RunRecord:
        """A run by id or unique id prefix (`lg status 2026112`)."""
        rows = self._db.execute(
            "SELECT * FROM runs WHERE id = ? OR id LIKE ? ORDER BY id LIMIT 2", (run_id, f"{run_id}%")
        ).fetchall()
        exact = [row for row in rows if row["id"] == run_id]
        if exact:
            return _run(exact[0], self.where)
        if len(rows) == 1:
            return _run(rows[0], self.where)
        if not rows:
            raise InvalidInput(f"no run {run_id!r} (see `lg runs`)")
        raise InvalidInput(f"run id prefix {run_id!r} is ambiguous")

    def runs(self, limit: int = 20) -> list[RunRecord]:
        rows = self._db.execute("SELECT * FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [_run(row, self.where) for row in rows]

    def run_dir(self, run_id: str) -> Path:
        return run_directory(self.state_dir, run_id)

    # --- runs: transitions --------------------------------------------------------------------------------

    def create_run(self, pipeline: str, pipeline_path: Path, workspace: Path, initiator: str,
                   steps: list[tuple[str, str]], pipeline_sha256: str | None = None,
                   inputs: list[dict[str, Any]] | None = None,
                   input_values: Mapping[str, Any] | None = None) -> RunRecord:
        now = time.time()
        with self.transaction() as db:
            run_id = new_run_id()
            while db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None:
                run_id = new_run_id()
            db.execute(
                "INSERT INTO runs (id, pipeline, pipeline_path, workspace, status, created, initiator, pid,"
                " pid_started, pipeline_sha256, inputs, input_values) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, pipeline, str(pipeline_path), str(workspace), RunStatus.PENDING, now, initiator,
                 os.getpid(), psutil.Process().create_time(), pipeline_sha256,
                 json.dumps(inputs) if inputs is not None else None,
                 json.dumps(dict(input_values)) if input_values is not None else None),
            )
            db.executemany(
                "INSERT INTO steps (run_id, step_id, position, name, status) VALUES (?, ?, ?, ?, ?)",
                [(run_id, step_id, position, name, StepStatus.PENDING)
                 for position, (step_id, name) in enumerate(steps)],
            )
            self.audit_log.append("run.created", run_id, {
                "pipeline": pipeline, "file": str(pipeline_path), "workspace": str(workspace),
                "initiator": initiator, "steps": [step_id for step_id, _ in steps], "pipeline_sha256": pipeline_sha256,
                **({"inputs": inputs} if inputs is not None else {}),
                **({"input_values": dict(input_values)} if input_values else {}),
            })
        return self.run(run_id)

    def accept_inputs(self, run_id: str, inputs: list[dict[str, Any]], changes: list[dict[str, Any]],
                      by: str) -> None:
        """The run goes on with inputs that changed since it started, because `by` accepted `changes` (no
        change of status: the claim that follows is the transition)."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET inputs = ? WHERE id = ?", (json.dumps(inputs), run_id))
            self.audit_log.append("run.inputs_accepted", run_id, {"by": by, "changes": changes})

    def start_run(self, run_id: str) -> None:
        """The lg process that created the run starts it."""
        with self.transaction() as db:
            self._move_run(db, run_id, RunStatus.RUNNING, {"started": time.time()}, source=_NEW)

    def claim(self, run_id: str, by: str) -> RunRecord:
        """Take over a paused, interrupted or abandoned run for this process (`lg resume`), or refuse: a finished
        run, or one another live lg process runs. Compare-and-set on status and pid, so of two processes claiming
        the same run at once exactly one wins."""
        seen = self.run(run_id)
        if seen.finished_for_good:
            raise InvalidInput(f"run {seen.id} already finished ({seen.status}); there is nothing to resume")
        if seen.process_alive and seen.pid != os.getpid():
            raise InvalidInput(f"run {seen.id} is still being run by lg process {seen.pid}; wait for it, or "
                               f"`lg cancel {seen.id}`")
        if seen.cancel_requested is not None:
            raise InvalidInput(f"run {seen.id} is being cancelled (asked by {seen.cancel_requested.get('by')}); "
                               f"`lg cancel {seen.id}` finishes it")
        with self.transaction() as db:
            current = db.execute("SELECT status, pid FROM runs WHERE id = ?", (seen.id,)).fetchone()
            if (current["status"], current["pid"]) != (seen.status, seen.pid):
                raise InvalidInput(f"run {seen.id} was taken over by another lg process just now")
            self._move_run(db, seen.id, RunStatus.RUNNING, {
                "pid": os.getpid(), "pid_started": psutil.Process().create_time(), "finished": None, "exit_code": None,
                "error": None})
            self.audit_log.append("run.resumed", seen.id, {"by": by})
        return self.run(seen.id)

    def pause(self, run_id: str, gate_id: str, *, waiting: bool) -> None:
        """The run stops at an open gate. Unless an lg process waits there (--wait), none is behind the run any
        more: its pid goes, so the run reads as paused, not abandoned."""
        process: dict[str, object] = {} if waiting else {"pid": None, "pid_started": None}
        with self.transaction() as db:
            self._move_run(db, run_id, RunStatus.AWAITING_APPROVAL, process)
            self.audit_log.append("run.paused", run_id, {"gate": gate_id, "waiting": waiting})

    def continue_run(self, run_id: str, gate_id: str, gate_status: GateStatus, noticed_after: float) -> None:
        """The lg process waiting at a gate saw it decided, `noticed_after` seconds after the decision."""
        with self.transaction() as db:
            self._move_run(db, run_id, RunStatus.RUNNING, source=_PAUSED)
            self.audit_log.append("run.continued", run_id, {"gate": gate_id, "gate_status": gate_status,
                                                            "noticed_after": noticed_after})

    def finish_run(self, run_id: str, status: RunStatus, exit_code: int, error: str | None) -> None:
        """The run is over (or interrupted, to be resumed): its outcome and the record of it."""
        exit_code = int(exit_code)  # a plain number in the database and the audit record, not an ExitCode
        with self.transaction() as db:
            self._move_run(db, run_id, status, {"finished": time.time(), "exit_code": exit_code, "error": error},
                           to=_RUN_ENDINGS)
            self.audit_log.append("run.finished", run_id, {"status": status, "exit_code": exit_code, "error": error})

    def request_cancel(self, run_id: str, reason: str, by: str) -> RunRecord:
        """`lg cancel` of a run a live lg process is running: recorded (and audited) before that process is told,
        so that from now on it can make no progress whatever happens to the signal (_refuse_progress)."""
        with self.transaction() as db:
            record = self.run(run_id)
            if record.finished_for_good:
                raise InvalidInput(f"run {record.id} already finished ({record.status}); there is nothing to cancel")
            request = {"reason": reason, "by": by, "at": time.time()}
            _write(db, "runs", {"cancel_requested": json.dumps(request)}, "id = ?", (record.id,))
            self.audit_log.append("run.cancel_requested", record.id, {"reason": reason, "by": by})
        return self.run(record.id)

    def cancel(self, run_id: str, reason: str) -> RunRecord:
        """`lg cancel` in the records, all at once: the run, its steps that had not ended, and its open gates are
        cancelled. Stopping its lg process and discarding its held files are the caller's."""
        with self.transaction() as db:
            record = self.run(run_id)
            if record.finished_for_good:
                raise InvalidInput(f"run {record.id} already finished ({record.status}); there is nothing to cancel")
            self._move_run(db, record.id, RunStatus.CANCELLED, {
                "finished": time.time(), "exit_code": int(ExitCode.REJECTED), "error": reason})
            for step in self.steps(record.id):
                if step.status not in ENDED_STEPS:
                    self._move_step(db, record.id, step.step_id, StepStatus.CANCELLED, {"detail": reason})
            self.audit_log.append("run.cancelled", record.id, {"reason": reason})
            GateStore(self).cancel(record.id, reason)
        return self.run(record.id)

    # --- steps: reading -----------------------------------------------------------------------------------

    def step(self, run_id: str, step_id: str) -> StepRecord:
        for record in self.steps(run_id):
            if record.step_id == step_id:
                return record
        raise InvalidInput(f"run {run_id} has no step {step_id!r}")

    def steps(self, run_id: str) -> list[StepRecord]:
        rows = self._db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()
        return [_step(row, self.where) for row in rows]

    # --- steps: transitions -------------------------------------------------------------------------------

    def start_step(self, run_id: str, step_id: str, log_path: Path, script_sha256: str) -> None:
        """The step's first attempt starts (again from scratch, when a resumed run runs it again)."""
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, StepStatus.RUNNING, {
                "started": time.time(), "log_path": str(log_path), "attempts": 1})
            self.audit_log.append("step.started", run_id, {"step": step_id, "script_sha256": script_sha256})

    def wait_at_gate(self, run_id: str, step_id: str, status: StepStatus, gate_id: str) -> None:
        """The step waits at an open gate: before it runs (awaiting_approval) or with its effects held (held)."""
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, status, {"detail": f"waiting for approval at gate {gate_id}"},
                            to=WAITING_STEPS)

    def skip_step(self, run_id: str, step_id: str, reason: str) -> None:
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, StepStatus.SKIPPED, {"detail": reason})
            self.audit_log.append("step.skipped", run_id, {"step": step_id, "reason": reason})

    def end_step(self, run_id: str, step_id: str, status: StepStatus, detail: str, *, audited: bool = True) -> None:
        """The step ended, failed or stopped at its gate or interrupted, for `detail`. Not `audited`: the run's
        own record says why (interrupted, or refused by this host), as it always has."""
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, status, {"detail": detail, "finished": time.time()},
                            to=_STEP_ENDINGS)
            if audited:
                self.audit_log.append(f"step.{status}", run_id, {"step": step_id, "detail": detail})

    def cancel_step(self, run_id: str, step_id: str, reason: str) -> None:
        """One step of a run that goes on is cancelled: stopped while it ran (its VM destroyed, nothing of it
        applied) or while it waited at a gate, because another step failed under `fail_fast`. Its open gate,
        if any, is cancelled with it."""
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, StepStatus.CANCELLED, {"detail": reason, "finished": time.time()})
            self.audit_log.append("step.cancelled", run_id, {"step": step_id, "reason": reason})
            GateStore(self).cancel(run_id, reason, step_id)

    def end_attempts(self, run_id: str, step_id: str, status: StepStatus) -> None:
        """The step's last attempt failed or timed out: the step ends as it did (its exit code and detail are
        the last attempt's, already recorded)."""
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, status, {"finished": time.time()}, to=FAILED_STEPS)
            exit_code = db.execute("SELECT exit_code FROM steps WHERE run_id = ? AND step_id = ?",
                                   (run_id, step_id)).fetchone()[0]
            self.audit_log.append("step.finished", run_id, {"step": step_id, "status": status, "exit_code": exit_code})

    def applying(self, run_id: str, step_id: str, effects_grade: Mapping[str, Any] | None = None) -> None:
        """Durable before the workspace changes, so that a resumed run finishes applying. The effects grade may
        come along (one commit, one fsync, fewer)."""
        graded = {"effects_grade": dict(effects_grade)} if effects_grade is not None else {}
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, StepStatus.APPLYING, graded)

    def applied(self, run_id: str, step_id: str, changes: Sequence[FileChange]) -> None:
        """The step's effects are in the workspace: it succeeded."""
        with self.transaction() as db:
            self._move_step(db, run_id, step_id, StepStatus.SUCCEEDED, {"finished": time.time()})
            self.audit_log.append("effects.applied", run_id, {
                "step": step_id, "changes": [{"path": c.path, "kind": c.kind, "sha256": c.sha256} for c in changes]})

    # --- steps: what they record besides their status ------------------------------------------------------

    def retry_step(self, run_id: str, step_id: str, attempt: int) -> None:
        with self.transaction() as db:
            self._write_step(db, run_id, step_id, {"attempts": attempt})

    def record_attempt(self, run_id: str, step_id: str, attempt: Attempt) -> None:
        with self.transaction() as db:
            self._write_step(db, run_id, step_id, {
                "exit_code": attempt.exit_code, "accelerator": attempt.accelerator,
                "image_digest": attempt.image_digest, "boot_seconds": attempt.boot_seconds,
                "outputs": dict(attempt.outputs), "changes": [asdict(change) for change in attempt.changes],
                "detail": attempt.detail,
                "security": dict(attempt.security) if attempt.security is not None else None,
                "vm": dict(attempt.vm) if attempt.vm is not None else None,
            })

    def grade_step(self, run_id: str, step_id: str, grade: Mapping[str, Any]) -> None:
        """The step's grade before it runs, and the record of it."""
        with self.transaction() as db:
            self._write_step(db, run_id, step_id, {"grade": dict(grade)})
            self.audit_log.append("step.graded", run_id, {"step": step_id, **grade})

    def grade_effects(self, run_id: str, step_id: str, grade: Mapping[str, Any]) -> None:
        with self.transaction() as db:
            self._write_step(db, run_id, step_id, {"effects_grade": dict(grade)})

    def note_step(self, run_id: str, step_id: str, detail: str) -> None:
        """A line for `lg status` about the step (a gate it passed), its status unchanged."""
        with self.transaction() as db:
            self._write_step(db, run_id, step_id, {"detail": detail})

    # --- the one way statuses change -----------------------------------------------------------------------

    def _move_run(self, db: Connection, run_id: str, wanted: RunStatus,
                  columns: Mapping[str, object] | None = None, *, to: frozenset[RunStatus] | None = None,
                  source: frozenset[RunStatus] | None = None) -> None:
        """Move the run to `wanted` if the table allows it from the status read now (and the calling method
        makes such moves: `to` and `source` narrow the table to them)."""
        row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise InvalidInput(f"no run {run_id!r} (see `lg runs`)")
        current = RunStatus(row["status"])
        _check(RUNS, f"run {run_id}", current, wanted, to, source)
        if wanted not in _WHILE_CANCELLING_RUN:
            _refuse_progress(db, run_id)
        _write(db, "runs", {"status": wanted, **(columns or {})}, "id = ? AND status = ?", (run_id, current))

    def _move_step(self, db: Connection, run_id: str, step_id: str, wanted: StepStatus,
                   columns: Mapping[str, object] | None = None, *, to: frozenset[StepStatus] | None = None,
                   ) -> None:
        current = self._step_status(db, run_id, step_id)
        _check(STEPS, f"step {step_id} of run {run_id}", current, wanted, to, None)
        if (current, wanted) not in _LANDING and wanted not in _WHILE_CANCELLING_STEP:
            _refuse_progress(db, run_id)
        _write(db, "steps", {"status": wanted, **(columns or {})}, "run_id = ? AND step_id = ? AND status = ?",
               (run_id, step_id, current))

    def _write_step(self, db: Connection, run_id: str, step_id: str, columns: Mapping[str, object]) -> None:
        self._step_status(db, run_id, step_id)  # it exists
        _write(db, "steps", columns, "run_id = ? AND step_id = ?", (run_id, step_id))

    def _step_status(self, db: Connection, run_id: str, step_id: str) -> StepStatus:
        row = db.execute("SELECT status FROM steps WHERE run_id = ? AND step_id = ?", (run_id, step_id)).fetchone()
        if row is None:
            raise InvalidInput(f"run {run_id} has no step {step_id!r}")
        return StepStatus(row["status"])


# What finish_run and end_step make; cancelled, skipped and succeeded have methods (and records) of their own.
_RUN_ENDINGS = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.REJECTED, RunStatus.EXPIRED,
                          RunStatus.INTERRUPTED})
_STEP_ENDINGS = frozenset({StepStatus.FAILED, StepStatus.REJECTED, StepStatus.EXPIRED, StepStatus.INTERRUPTED})
# What a run and its steps may still do once `lg cancel` asked its lg process to stop: stop (interrupted, as a
# Ctrl-C on the way would), be cancelled, and finish landing effects already being applied (apply is not undone
# half-way; lg.runner.interrupts defers the signal across it). Nothing else: no step starts, no gate is passed,
# no effects start to land, and the run cannot end any other way.
_WHILE_CANCELLING_RUN = frozenset({RunStatus.CANCELLED, RunStatus.INTERRUPTED})
_WHILE_CANCELLING_STEP = frozenset({StepStatus.CANCELLED, StepStatus.INTERRUPTED})
_LANDING = frozenset({(StepStatus.APPLYING, StepStatus.SUCCEEDED)})
# start_run starts a new run (claim takes up any other); continue_run goes on from a pause
_NEW = frozenset({RunStatus.PENDING})
_PAUSED = frozenset({RunStatus.AWAITING_APPROVAL})


def run_directory(state_dir: Path, run_id: str) -> Path:
    """A run's local files (step logs, held effects, artifacts) under a state directory, made if missing."""
    path = state_dir / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def _refuse_progress(db: Connection, run_id: str) -> None:
    row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is not None and row["cancel_requested"] is not None:
        raise CancelRequested(f"run {run_id} was cancelled with lg cancel; nothing more of it runs or is applied")


def _check(machine: Machine[AnyStatus], what: str, current: AnyStatus, wanted: AnyStatus,
           to: frozenset[AnyStatus] | None, source: frozenset[AnyStatus] | None) -> None:
    if (to is not None and wanted not in to) or (source is not None and current not in source):
        raise IllegalTransition(what, current, wanted)
    machine.check(what, current, wanted)


def _write(db: Connection, table: str, columns: Mapping[str, object], where: str,
           key: tuple[object, ...]) -> None:
    unknown = set(columns) - _WRITABLE[table]
    if unknown:
        raise InternalError(f"{table} has no writable column(s) {', '.join(sorted(unknown))}")
    values = [json.dumps(value) if name in JSON_COLUMNS else value for name, value in columns.items()]
    # Column names come from _WRITABLE (checked above), never from user input.
    assignments = ", ".join(f"{name} = ?" for name in columns)
    db.execute(f"UPDATE {table} SET {assignments} WHERE {where}", (*values, *key))  # noqa: S608


def _run(row: Any, path: Path | str) -> RunRecord:
    try:
        inputs = json.loads(row["inputs"]) if row["inputs"] is not None else None
        cancel = json.loads(row["cancel_requested"]) if row["cancel_requested"] is not None else None
        values = json.loads(row["input_values"]) if row["input_values"] is not None else None
        return RunRecord(**{**dict(row), "status": RunStatus(row["status"]), "inputs": inputs,
                            "cancel_requested": cancel, "input_values": values})
    except (ValueError, TypeError) as error:  # a status or JSON lg never wrote: the file is damaged
        raise unreadable_row(path, "runs", error) from error


def _step(row: Any, path: Path | str) -> StepRecord:
    data = dict(row)
    try:
        for key in JSON_COLUMNS:
            data[key] = json.loads(data[key]) if data[key] is not None else None
        return StepRecord(**{**data, "status": StepStatus(data["status"])})
    except (ValueError, TypeError) as error:
        raise unreadable_row(path, "steps", error) from error
