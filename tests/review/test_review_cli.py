"""`lg review`'s answers before any screen: not a terminal (exit 5), nothing pending (exit 0), a bad RUN (exit 2).
The screen itself: test_review_app.py (pilot) and test_review_tmux.py (a real terminal)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.runs.store import RunStore
from tests.review.scenes import explicit_gate


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    monkeypatch.setenv("LG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    return RunStore(tmp_path / "state")


def test_not_a_terminal_points_at_the_headless_commands(state: RunStore, tmp_path: Path,
                                                        lg: Callable[..., Any]) -> None:
    explicit_gate(state, tmp_path)
    result = lg("review")
    assert result.code == 5
    assert "lg review is interactive and needs a terminal" in result.err
    assert "lg pending`, `lg show RUN` and `lg approve` / `lg reject`" in result.err


def test_nothing_pending_says_so_and_exits_0(state: RunStore, tmp_path: Path, lg: Callable[..., Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lg.cli.review.interactive", lambda: True)
    result = lg("review")
    assert (result.code, result.out.strip()) == (0, "no open gates: nothing to review")
    explicit_gate(state, tmp_path)  # open, but of another run
    other = state.create_run("other", tmp_path / "o.yaml", tmp_path, "alice", [("x", "x")])
    assert lg("review", other.id).out.strip() == f"run {other.id} has no open gate"
    unknown = lg("review", "20990101-000000-dead")
    assert unknown.code == 2 and "no run '20990101-000000-dead'" in unknown.err


def test_lg_help_does_not_load_textual() -> None:
    import subprocess
    import sys

    code = "import sys, lg.cli.main as m; m.run(['--help']); print('textual' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert re.search(r"review +Review pending gates interactively", out) and out.strip().endswith("False False")
