"""A damaged lg.db is exit 5 naming the file and the fix, for every command, never exit 70; and it is left
byte for byte as it was (issue #20 item 5). SQLite only: these tests damage the database file itself, which a
PostgreSQL store does not have (its server checks its own pages)."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.runs.gates import GateRules, GateStore
from lg.runs.store import RunStore

COMMANDS = (["runs"], ["status", "{run}"], ["logs", "{run}"], ["pending"], ["audit", "verify"], ["audit", "export"],
            ["approve", "{run}"], ["reject", "{run}", "--reason", "no"], ["cancel", "{run}"], ["resume", "{run}"])


def healthy(state: Path, tmp_path: Path) -> tuple[str, bytes]:
    """A state directory with a run paused at a gate, closed (checkpointed into lg.db, no WAL left)."""
    store = RunStore(state)
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("ship", "Ship"), ("after", "After")])
    card = {"gate": "ship.before", "level": "yellow", "kind": "explicit"}
    gate = GateStore(store).open(run.id, "ship", "explicit", {"run": run.id}, card, GateRules())
    store.start_run(run.id)
    store.pause(run.id, gate.gate_id, waiting=False)
    store.close()
    return run.id, (state / "lg.db").read_bytes()


def raw(state: Path, sql: str) -> None:
    """An edit made behind lg's back, as damage or a careless hand would make it."""
    db = sqlite3.connect(state / "lg.db", isolation_level=None)
    db.execute(sql)
    db.close()


def damage(kind: str, state: Path, data: bytes) -> None:
    page = int.from_bytes(data[16:18], "big")
    if kind == "random bytes":
        (state / "lg.db").write_bytes(random.Random(1).randbytes(len(data)))
    elif kind == "truncated":
        (state / "lg.db").write_bytes(data[: len(data) // 2 + 100])
    elif kind == "garbage schema version":  # PRAGMA user_version, bytes 60-63 of the header
        (state / "lg.db").write_bytes(data[:60] + b"\xff\xfe\x00\x01" + data[64:])
    elif kind == "small schema version":  # a version whose migrations were applied long ago
        (state / "lg.db").write_bytes(data[:60] + (2).to_bytes(4, "big") + data[64:])
    elif kind == "text encoding":  # the header's text encoding field says UTF-16, the text is UTF-8
        (state / "lg.db").write_bytes(data[:56] + (2).to_bytes(4, "big") + data[60:])
    elif kind == "zeroed page":
        (state / "lg.db").write_bytes(data[:page] + bytes(page) + data[2 * page:])
    elif kind == "text not UTF-8":
        raw(state, "UPDATE runs SET pipeline_path = CAST(X'2F746D70FFFE2F702E79616D6C' AS TEXT)")
    elif kind == "status lg never wrote":
        raw(state, "UPDATE runs SET status = 'exploded'")
    elif kind == "gate JSON":
        raw(state, "UPDATE gates SET rules = '{not json'")
    else:
        raise AssertionError(kind)


KINDS = ["random bytes", "truncated", "garbage schema version", "small schema version", "text encoding",
         "zeroed page", "text not UTF-8", "status lg never wrote", "gate JSON"]


UNREADABLE_FILE = {"random bytes", "truncated", "garbage schema version", "small schema version", "text encoding"}
WRITERS = {"approve", "reject", "cancel"}


def expected_codes(kind: str, command: str) -> set[int]:
    """A file SQLite cannot open stops every command; damaged pages or values stop every command that writes
    (which checks the whole file first); `lg resume` stops at the pipeline it cannot find, or at the damage."""
    if kind in UNREADABLE_FILE or command in WRITERS:
        return {5}
    return {2, 5} if command == "resume" else {0, 5}


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_reports_a_damaged_database_with_exit_5_and_leaves_it_as_it_was(
        kind: str, tmp_path: Path, lg: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("LG_STATE_DIR", str(state))
    monkeypatch.setenv("LG_USER", "bob")
    run_id, data = healthy(state, tmp_path)
    damage(kind, state, data)
    damaged = (state / "lg.db").read_bytes()
    for command in COMMANDS:
        result = lg(*[arg.format(run=run_id) for arg in command])
        assert result.code in expected_codes(kind, command[0]), (command, result.code, result.err)
        if result.code != 5:
            continue  # a reading command that never met the damage (a free page, a column it does not read)
        assert f"state database {state / 'lg.db'} is damaged" in result.err, result.err
        assert "it was left as it is" in result.err and f"move the state directory {state} aside" in result.err
    assert (state / "lg.db").read_bytes() == damaged


@pytest.mark.parametrize("kind", ["text not UTF-8", "status lg never wrote", "gate JSON"])
def test_a_damaged_value_is_reported_by_the_commands_that_read_it(
        kind: str, tmp_path: Path, lg: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("LG_STATE_DIR", str(state))
    run_id, data = healthy(state, tmp_path)
    damage(kind, state, data)
    command = ["pending"] if kind == "gate JSON" else ["status", run_id]
    result = lg(*command)
    assert result.code == 5 and "is damaged" in result.err, result.err


def test_random_damage_anywhere_never_crashes_and_never_writes(tmp_path: Path, lg: Callable[..., Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes flipped, pages zeroed or the file cut at random places, read by every reading command."""
    rng = random.Random(20)
    _, data = healthy(tmp_path / "healthy", tmp_path)
    for case in range(60):
        state = tmp_path / f"case{case}"
        state.mkdir()
        blob = bytearray(data)
        where = rng.randrange(len(blob))
        match case % 3:
            case 0:
                blob[where:where + 16] = rng.randbytes(16)
            case 1:
                blob[where - where % 512:where - where % 512 + 512] = bytes(512)
            case _:
                del blob[where:]
        (state / "lg.db").write_bytes(blob)
        monkeypatch.setenv("LG_STATE_DIR", str(state))
        for command in (["runs"], ["pending"], ["audit", "verify"], ["audit", "export"]):
            result = lg(*command)
            assert result.code in (0, 1, 5), (case, command, result.err)
        assert (state / "lg.db").read_bytes() == bytes(blob), case
