"""The state database's tables, and the migrations from every older version of them, for both stores.

Statuses are stored as the text of lg.runs.states' enums, unchanged since version 1. The version is SQLite's
PRAGMA user_version, or PostgreSQL's lg_schema table (lg.runs.dialect).

A migration is a list of steps, each portable SQL (one statement) or a `Dialects` pair when the two stores need
different words. Portable DDL is written in SQLite's types, and the PostgreSQL store reads CREATE TABLE and ALTER
TABLE in its own (INTEGER as BIGINT, REAL as DOUBLE PRECISION, BLOB as BYTEA, INTEGER PRIMARY KEY AUTOINCREMENT as
BIGSERIAL PRIMARY KEY: lg.runs.dialect.ddl). To add version N+1: raise SCHEMA_VERSION, add MIGRATIONS[N], and
add the same columns or tables to SCHEMA (what a new database is made with).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialects:
    """One step of a migration that is written differently for each store."""

    sqlite: str
    postgresql: str


Step = str | Dialects

SCHEMA_VERSION = 11

GATES_TABLES = """
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

# API tokens of `lg serve` (lg.runs.tokens): only the SHA-256 of each secret is kept. Portable DDL (TEXT and
# INTEGER, epoch seconds as integers, no AUTOINCREMENT): the PostgreSQL store runs the same migrations.
TOKENS_TABLE = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked INTEGER
)
"""

# Agent steps (lg.agent): the conversation of each agent step, what it spent, and (while it waits at a tool-call
# gate) the gate, the call and the VM snapshot it resumes from. Portable DDL, as the tokens table.
AGENT_TABLE = """
CREATE TABLE IF NOT EXISTS agent_sessions (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step_id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    spend TEXT NOT NULL,
    gate_id TEXT,
    call TEXT,
    snapshot TEXT,
    updated INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id)
)
"""

MIGRATIONS: dict[int, tuple[Step, ...]] = {  # from version N to N+1
    1: ("ALTER TABLE steps ADD COLUMN grade TEXT", "ALTER TABLE steps ADD COLUMN effects_grade TEXT"),
    2: ("ALTER TABLE runs ADD COLUMN pid INTEGER", "ALTER TABLE runs ADD COLUMN pid_started REAL"),
    3: ("ALTER TABLE runs ADD COLUMN pipeline_sha256 TEXT", *GATES_TABLES.split(";")),
    4: ("ALTER TABLE steps ADD COLUMN security TEXT",),
    5: ("ALTER TABLE steps ADD COLUMN vm TEXT",),
    6: ("ALTER TABLE runs ADD COLUMN inputs TEXT",),
    7: ("ALTER TABLE runs ADD COLUMN cancel_requested TEXT",),
    8: ("ALTER TABLE runs ADD COLUMN input_values TEXT",),
    9: (TOKENS_TABLE,),
    10: (AGENT_TABLE,),
}

SCHEMA = """
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
    inputs TEXT,
    cancel_requested TEXT,
    input_values TEXT
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
""" + GATES_TABLES + ";" + TOKENS_TABLE + ";" + AGENT_TABLE
