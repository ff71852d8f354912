"""Choosing the store (lg.yaml `state:`, LG_STATE_URL, `--state`), the dialects' differences, and the audit log
checked offline from an export, on both stores."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from lg.config.project import load_project_config
from lg.errors import EnvironmentUnfit
from lg.runs.dialect import ddl
from lg.runs.gates import GateRules, GateStore
from lg.runs.postgres import placeholders, redacted
from lg.runs.schema import MIGRATIONS, Dialects
from lg.runs.states import RunStatus
from lg.runs.store import RunStore
from lg.runs.tokens import TokenStore
from tests.pgcluster import Cluster
from tests.stores import StoreBackend, raw, state_env


def test_portable_ddl_is_read_in_postgresql_types_and_other_sql_is_left_alone() -> None:
    assert ddl("CREATE TABLE t (a INTEGER PRIMARY KEY AUTOINCREMENT, b REAL, c BLOB, d integer, e TEXT)") == \
        "CREATE TABLE t (a BIGSERIAL PRIMARY KEY, b DOUBLE PRECISION, c BYTEA, d BIGINT, e TEXT)"
    assert ddl("ALTER TABLE runs ADD COLUMN started_again REAL") == \
        "ALTER TABLE runs ADD COLUMN started_again DOUBLE PRECISION"
    assert ddl("CREATE INDEX IF NOT EXISTS real_index ON runs(created)") == \
        "CREATE INDEX IF NOT EXISTS real_index ON runs(created)"
    assert placeholders("SELECT * FROM runs WHERE id LIKE ? AND x = '%'") == \
        "SELECT * FROM runs WHERE id LIKE %s AND x = '%%'"
    assert all(isinstance(step, str | Dialects) for steps in MIGRATIONS.values() for step in steps)


def test_a_password_never_shows_in_messages() -> None:
    assert redacted("postgresql://lg:s3cret@db.example.com:5432/lg") == "postgresql://lg:***@db.example.com:5432/lg"
    assert redacted("postgresql://lg@/lg?host=/run/pg") == "postgresql://lg@/lg?host=/run/pg"


def test_the_store_is_chosen_by_lg_yaml_and_the_environment_wins(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LG_STATE_URL", raising=False)
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    (tmp_path / "lg.yaml").write_text("state_dir: .lg\nstate: postgresql://lg@/from-yaml?host=/run/pg\n")
    config = load_project_config(tmp_path)
    assert (config.state_url, config.state_dir) == ("postgresql://lg@/from-yaml?host=/run/pg", tmp_path / ".lg")
    monkeypatch.setenv("LG_STATE_URL", "postgresql://lg@/from-env")
    assert load_project_config(tmp_path).state_url == "postgresql://lg@/from-env"
    (tmp_path / "lg.yaml").write_text("state_dir: .lg\n")
    monkeypatch.delenv("LG_STATE_URL")
    assert load_project_config(tmp_path).state_url is None


def test_a_state_that_is_no_postgresql_url_is_refused_naming_where(tmp_path: Path, lg: Callable[..., Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LG_STATE_URL", raising=False)
    (tmp_path / "lg.yaml").write_text("state: mysql://lg@db/lg\n")
    monkeypatch.chdir(tmp_path)
    result = lg("runs")
    assert result.code == 2 and "lg.yaml" in result.err and "state" in result.err
    (tmp_path / "lg.yaml").write_text("image: tiny\n")
    monkeypatch.setenv("LG_STATE_URL", "mysql://lg:secret@db/lg")
    result = lg("runs")
    assert result.code == 2 and "LG_STATE_URL is not a postgresql:// URL" in result.err
    assert "secret" not in result.err
    monkeypatch.delenv("LG_STATE_URL")
    result = lg("token", "ls", "--state", "mysql://db/lg")
    assert result.code == 2 and "--state mysql://" in result.err and "Traceback" not in result.err
    one_slash = lg("token", "ls", "--state", "postgresql:/db/lg")  # never a directory named "postgresql:"
    assert one_slash.code == 2 and "--state postgresql:..." in one_slash.err
    assert not (tmp_path / "postgresql:").exists() and not Path("postgresql:").exists()


def test_an_unreachable_postgresql_server_is_a_clear_error(tmp_path: Path, lg: Callable[..., Any]) -> None:
    missing = tmp_path / "no-server"
    missing.mkdir()
    result = lg("token", "ls", "--state", f"postgresql://lg:hunter2@/lg?host={missing}")
    assert result.code == 5 and "cannot connect to the state database" in result.err
    assert "hunter2" not in result.err and "Traceback" not in result.err


def test_tokens_are_made_where_the_store_is(tmp_path: Path, lg: Callable[..., Any],
                                            store_backend: StoreBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_backend.open(tmp_path / "state")
    monkeypatch.chdir(tmp_path)
    state = store.url or str(store.state_dir)
    made = lg("token", "create", "alice@example.com", "--role", "approver", "--state", state, "--json")
    assert made.code == 0, made.err
    text = json.loads(made.out)["token"]
    assert TokenStore(store).authenticate(text) is not None
    listed = lg("token", "ls", "--state", state, "--json")
    assert [row["name"] for row in json.loads(listed.out)] == ["alice@example.com"]
    assert lg("token", "revoke", "alice@example.com", "--state", state).code == 0
    assert TokenStore(store).authenticate(text) is None
    assert [r.kind for r in store.audit_log.records()] == ["token.created", "token.revoked"]
    assert store.verify_audit() == []


def test_the_audit_log_verifies_offline_from_its_export(tmp_path: Path, lg: Callable[..., Any],
                                                        store_backend: StoreBackend,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_backend.open(tmp_path / "state")
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("ship", "Ship")])
    gates = GateStore(store)
    gates.open(run.id, "ship", "explicit", {"run": run.id, "note": "ünïcode ✓", "n": 0.1 + 0.2}, {}, GateRules())
    store.start_run(run.id)
    store.finish_run(run.id, RunStatus.FAILED, 1, "it failed")
    state_env(monkeypatch, store)
    assert lg("audit", "verify").code == 0
    for flags, name in (((), "audit.jsonl"), (("--json",), "audit.json")):
        exported = lg("audit", "export", *flags)
        assert exported.code == 0
        (tmp_path / name).write_text(exported.out)
        checked = lg("audit", "verify", tmp_path / name, "--json")
        assert checked.code == 0 and json.loads(checked.out) == {"ok": True, "records": 3, "problems": []}
    # an export edited after the fact fails, offline, naming the record
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    edited = json.loads(lines[1])
    edited["data"]["gate"] = "elsewhere"
    (tmp_path / "edited.jsonl").write_text("\n".join([lines[0], json.dumps(edited), *lines[2:]]) + "\n")
    checked = lg("audit", "verify", tmp_path / "edited.jsonl")
    assert checked.code == 1 and "record 2 (gate.opened) was edited" in checked.err
    (tmp_path / "bad.jsonl").write_text(lines[0] + "\n{not json\n")
    refused = lg("audit", "verify", tmp_path / "bad.jsonl")
    assert refused.code == 2 and "bad.jsonl:2" in refused.err
    # and the store itself, edited behind lg's back, fails `lg audit verify`
    raw(store).execute("UPDATE audit SET kind = 'gate.approved' WHERE seq = 2")
    assert lg("audit", "verify").code == 1


def test_two_stores_opening_a_new_postgresql_database_at_once_migrate_it_once(
        tmp_path: Path, store_backend: StoreBackend) -> None:
    import threading

    url = store_backend.url(tmp_path)
    problems: list[BaseException] = []
    ready = threading.Barrier(6)

    def open_it() -> None:
        ready.wait()
        try:
            RunStore(tmp_path, url).close()
        except BaseException as error:
            problems.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    store = store_backend.open(tmp_path)
    assert store.dialect.schema_version(store.connection) == __import__("lg.runs.schema").runs.schema.SCHEMA_VERSION


def test_a_postgresql_row_lg_cannot_read_is_damage_naming_the_database(
        tmp_path: Path, lg: Callable[..., Any], pg_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path, pg_cluster.database())
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("a", "A")])
    raw(store).execute("UPDATE runs SET status = 'exploded' WHERE id = ?", (run.id,))
    state_env(monkeypatch, store)
    result = lg("status", run.id)
    assert result.code == 5 and "a row of runs lg cannot read back" in result.err
    assert redacted(pg_cluster.url()).split("/")[0] in result.err and "psql" in result.err


def test_a_lost_postgresql_connection_is_an_environment_error_not_a_crash(tmp_path: Path,
                                                                          pg_cluster: Cluster) -> None:
    url = pg_cluster.database()
    store = RunStore(tmp_path, url)
    run = store.create_run("demo", tmp_path / "p.yaml", tmp_path, "alice", [("a", "A")])
    database = urlsplit(url).path.lstrip("/")  # a name tests/pgcluster.py made: lg_PID_N
    pg_cluster.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")  # noqa: S608
    with pytest.raises(EnvironmentUnfit, match=r"the state database .* failed"):
        store.start_run(run.id)
    assert RunStore(tmp_path, url).run(run.id).status == "pending"  # nothing half-done


def test_agent_sessions_of_migration_11_round_trip_on_both_stores(tmp_path: Path,
                                                                  store_backend: StoreBackend) -> None:
    from lg.runs.agent_sessions import AgentSessions

    store = store_backend.open(tmp_path)
    run = store.create_run("agent", tmp_path / "p.yaml", tmp_path, "alice", [("think", "Think")])
    sessions = AgentSessions(store)
    sessions.save(run.id, "think", {"messages": [{"role": "user", "content": "hé ✓"}]}, {"usd": 0.25},
                  gate_id="think.tool-1", call={"tool": "run", "args": {"cmd": "ls"}}, snapshot=tmp_path / "vm")
    sessions.save(run.id, "think", {"messages": []}, {"usd": 0.5})  # saved again: replaced, not added
    (session,) = sessions.of_run(run.id)
    assert (session.conversation, session.spend, session.gate_id, session.call, session.snapshot) == \
        ({"messages": []}, {"usd": 0.5}, None, None, None)
