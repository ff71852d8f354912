"""`lg review` end to end in a real terminal: tmux runs it on a run paused at an effects gate (the real `lg run`
on the fake backend, tests/runner/lg_on_fake.py), keys go in with send-keys, the screen comes out with
capture-pane; after the decision, `lg resume` applies the held effects (approved) or discards them (rejected).
One variant (marked vm) pauses the real `lg run`, whose step ran in a real microVM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lg.config.project import load_project_config
from lg.errors import ExitCode
from lg.testing.images import stand_in_image

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "runner" / "lg_on_fake.py"
NOTE = "a note long enough that the command that writes it cannot fit on one row of an eighty column terminal"
PIPELINE = f"""\
    name: deps
    steps:
      - id: bump
        run: |
          echo '{{"name": "app", "dependencies": {{"left-pad": "1.3.0"}}}}' > package.json && echo '{NOTE}' > notes.txt
"""

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup does)")


@dataclass
class Terminal:
    """One tmux server of our own (its own socket), one window of a fixed size."""

    socket: Path
    name: str = "review"

    @property
    def status_file(self) -> Path:
        return self.socket.with_suffix(".status")

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def start(self, argv: list[str], cwd: Path, env: dict[str, str], size: tuple[int, int] = (80, 24)) -> None:
        config = self.socket.with_suffix(".conf")
        config.write_text("set -g remain-on-exit on\nset -g status off\n")  # keep the last screen; no status bar
        # tmux 3.3 does not always keep a pane's exit status: the shell writes it to a file (argv stays a list)
        keep_status = ["sh", "-c", 'status=$1; shift; "$@"; echo $? > "$status"', "sh", str(self.status_file)]
        subprocess.run(["tmux", "-S", str(self.socket), "-f", str(config), "new-session", "-d", "-s", self.name,
                        "-x", str(size[0]), "-y", str(size[1]), "-c", str(cwd), *keep_status, *argv],
                       env=env, check=True, timeout=30)

    def screen(self, *, history: bool = False) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name, *(["-S", "-"] if history else []))

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def type_in_dialog(self, text: str) -> None:
        """Type into the dialog just opened. Keys that arrive before its field has focus are dropped (no human
        types that fast), so clear and type again until the field holds exactly the text."""
        for _ in range(10):
            self.keys("C-u")
            self.keys(text, literal=True)
            try:
                self.wait_until(lambda shown: text in re.findall(r"▊\s*(.*?)\s*▎", shown), text, timeout=2)
                return
            except AssertionError:
                continue
        raise AssertionError(f"{text!r} could not be typed; the screen:\n{self.screen()}")

    def press_until(self, key: str, text: str) -> str:
        """Press `key` in the dialog just opened until `text` shows (see type_in_dialog)."""
        for _ in range(10):
            self.keys(key)
            try:
                return self.wait_for(text, timeout=2)
            except AssertionError:
                continue
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        return self.wait_until(lambda shown: text in shown, text, timeout)

    def wait_until(self, check: Callable[[str], bool], text: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if check(shown):
                return shown
            assert time.monotonic() < deadline, f"{text!r} never appeared; the screen:\n{shown}"
            time.sleep(0.1)

    def exit_status(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while not self.status_file.exists() or not self.status_file.read_text().strip():
            assert time.monotonic() < deadline, f"lg review did not exit; the screen:\n{self.screen()}"
            time.sleep(0.1)
        return int(self.status_file.read_text())

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True, check=False, timeout=30)


@dataclass
class Paused:
    root: Path
    run_id: str
    env: dict[str, str]
    lg: list[str]  # how `lg run` and `lg resume` are started: on the fake backend, or the real lg

    def runner(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.lg, *args], cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=600, check=False)

    def files(self) -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(self.root.iterdir()) if p.is_file()}


def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "project"
    root.mkdir()
    (root / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\npool: {snapshots: false}\n")
    (root / "package.json").write_text('{"name": "app"}\n')
    (root / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE))
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "LG_STATE_DIR", "TMUX")}
    env.update(PYTHONPATH=str(REPO), LG_USER="alice")
    return root, env


@pytest.fixture
def paused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paused:
    """A project whose `lg run` (alice's, on the fake backend) stopped at the effects gate of its one step."""
    root, env = project(tmp_path)
    env["LG_CACHE_DIR"] = str(tmp_path / "cache")
    monkeypatch.setenv("LG_CACHE_DIR", env["LG_CACHE_DIR"])
    stand_in_image(load_project_config(root), "tiny")
    return pause(Paused(root, "", env, [sys.executable, str(HELPER), str(tmp_path / "vms")]))


@pytest.fixture
def paused_in_vm(tmp_path: Path, tiny_image_ready: None) -> Paused:
    """The same, with the real `lg run`: the step ran in a real microVM (tiny image)."""
    root, env = project(tmp_path)
    return pause(Paused(root, "", env, [sys.executable, "-m", "lg"]))


def pause(run: Paused) -> Paused:
    root, env = run.root, run.env
    started = run.runner("run", "pipeline.yaml")
    assert started.returncode == ExitCode.AWAITING_APPROVAL, started.stderr
    pending = json.loads(subprocess.run([sys.executable, "-m", "lg", "pending", "--json"], cwd=root, env=env,
                                        capture_output=True, text=True, check=True, timeout=60).stdout)
    assert [gate["gate"] for gate in pending] == ["bump.effects"]
    run.run_id = pending[0]["run"]
    return run


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path / "tmux.sock")
    yield term
    term.kill()


def review(paused: Paused, terminal: Terminal, *args: str) -> str:
    """`lg review` started by bob in the terminal; returns its first screen with the card on it."""
    terminal.start([sys.executable, "-m", "lg", "review", *args], paused.root, {**paused.env, "LG_USER": "bob"})
    terminal.wait_for("effects gate bump.effects")
    return terminal.wait_until(lambda shown: "[1/" in shown and "q quit" in shown, "the key line")


def test_approve_in_the_terminal_then_resume_applies_the_effects(paused: Paused, terminal: Terminal) -> None:
    approve_then_resume(paused, terminal)


@pytest.mark.vm
def test_approve_in_the_terminal_a_step_that_ran_in_a_real_vm(paused_in_vm: Paused, terminal: Terminal) -> None:
    approve_then_resume(paused_in_vm, terminal)


def approve_then_resume(paused: Paused, terminal: Terminal) -> None:
    before = paused.files()
    shown = review(paused, terminal)
    assert paused.run_id in shown and "bump" in shown and "1 open gate · .lg" in shown
    assert "🟠 ORANGE" in shown  # the dependency manifest changed: the default policy grades it orange
    assert "effects.dependencies: Changes dependency manifests" in shown  # the rule that fired
    assert "│ echo '{" in shown and "↪" in shown  # the command, folded at the width
    assert "create  notes.txt" in shown
    indicator = next(word for word in shown.split() if word.startswith("[1/"))
    terminal.keys("j")
    terminal.wait_for(indicator.replace("[1/", "[2/"))
    terminal.keys("G")
    total = indicator.split("/")[1].rstrip("]")
    at_end = terminal.wait_until(lambda shown: f"[2/{total}" not in shown, "the indicator past [2/")
    assert '+{"name": "app", "dependencies"' in at_end  # the held diff of package.json: the end of the card
    top = int(next(word for word in at_end.split() if word.endswith(f"/{total}]"))[1:].split("/")[0])
    assert 2 < top < int(total)
    assert "modify  package.json" in at_end and '-{"name": "app"}' in at_end
    terminal.keys("a")
    terminal.wait_for("comment (optional)")
    terminal.type_in_dialog("reviewed in tmux")
    terminal.keys("Enter")
    done = terminal.wait_for("approve recorded for bump.effects")
    assert "APPROVED" in done
    terminal.keys("q")
    assert terminal.exit_status() == 0
    assert paused.files() == before  # nothing applied yet: the run is paused, no process behind it
    resumed = paused.runner("resume", paused.run_id)
    assert resumed.returncode == ExitCode.OK, resumed.stderr
    assert json.loads((paused.root / "package.json").read_text())["dependencies"] == {"left-pad": "1.3.0"}
    assert (paused.root / "notes.txt").read_text() == NOTE + "\n"
    audit = subprocess.run([sys.executable, "-m", "lg", "audit", "export", "--json"], cwd=paused.root,
                           env=paused.env, capture_output=True, text=True, check=True, timeout=60).stdout
    decisions = [r for r in json.loads(audit) if r["kind"] == "gate.decision"]
    assert [(d["data"]["approver"], d["data"]["verdict"], d["data"]["comment"]) for d in decisions] == [
        ("bob", "approve", "reviewed in tmux")]


def test_reject_with_a_reason_then_resume_discards_the_effects(paused: Paused, terminal: Terminal) -> None:
    before = paused.files()
    review(paused, terminal, paused.run_id)
    terminal.keys("r")
    terminal.wait_for("reason (required)")
    terminal.press_until("Enter", "a reason is required")
    terminal.type_in_dialog("left-pad is not a dependency we take")
    terminal.keys("Enter")
    done = terminal.wait_for("reject recorded for bump.effects")
    assert "REJECTED" in done
    terminal.keys("q")
    assert terminal.exit_status() == 0
    resumed = paused.runner("resume", paused.run_id)
    assert resumed.returncode == ExitCode.REJECTED, resumed.stderr
    assert "left-pad is not a dependency we take" in resumed.stderr + resumed.stdout
    assert paused.files() == before and not (paused.root / "notes.txt").exists()


def test_with_nothing_pending_it_says_so_and_exits_0(paused: Paused, terminal: Terminal) -> None:
    subprocess.run([sys.executable, "-m", "lg", "reject", paused.run_id, "--reason", "no"], cwd=paused.root,
                   env={**paused.env, "LG_USER": "bob"}, check=True, capture_output=True, timeout=60)
    terminal.start([sys.executable, "-m", "lg", "review"], paused.root, paused.env)
    assert terminal.exit_status() == 0
    assert "no open gates: nothing to review" in terminal.screen(history=True)


def test_a_signed_approval_with_a_passphrase_key_hands_the_terminal_to_ssh_keygen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: Terminal) -> None:
    """The policy requires signatures; the key is encrypted: ssh-keygen asks for its passphrase on the terminal
    while the reviewer steps aside, then the reviewer comes back and the decision is recorded, signed."""
    root, env = project(tmp_path)
    key = root / "bob_key"  # typed as a path relative to where lg review runs
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass phrase", "-C", "bob", "-f", str(key)],
                   check=True, timeout=30)
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    (root / "allowed_signers").write_text(f"bob@example.com {kind} {blob}\n")
    (root / "signed.yaml").write_text("extends: default\napprovals:\n  allowed_signers: allowed_signers\n"
                                      "  require_signature: true\n")
    (root / "pipeline.yaml").write_text("policy: ./signed.yaml\n" + textwrap.dedent(PIPELINE))
    env["LG_CACHE_DIR"] = str(tmp_path / "cache")
    monkeypatch.setenv("LG_CACHE_DIR", env["LG_CACHE_DIR"])
    stand_in_image(load_project_config(root), "tiny")
    paused = pause(Paused(root, "", env, [sys.executable, str(HELPER), str(tmp_path / "vms")]))
    shown = review(paused, terminal)
    assert "signature required" in shown
    terminal.keys("a")
    terminal.wait_for("Sign decisions with this SSH key")
    terminal.type_in_dialog(key.name)
    terminal.keys("Enter")
    terminal.wait_for("comment (optional)")
    terminal.type_in_dialog("signed in tmux")
    terminal.keys("Enter")
    terminal.wait_for("passphrase")
    terminal.keys("pass phrase", literal=True)
    terminal.keys("Enter")
    done = terminal.wait_for("approve recorded for bump.effects")
    assert "approved by bob@example.com" in done
    terminal.keys("q")
    assert terminal.exit_status() == 0
    shown_json = json.loads(subprocess.run([sys.executable, "-m", "lg", "show", "--json", paused.run_id],
                                           cwd=root, env=env, capture_output=True, text=True, check=True,
                                           timeout=60).stdout)
    assert shown_json["decisions"] == [{"approver": "bob@example.com", "verdict": "approve",
                                        "comment": "signed in tmux", "signed": True,
                                        "ts": shown_json["decisions"][0]["ts"]}]


def colours(escaped: str) -> list[bool]:
    """For every colour in a capture taken with its escape sequences (tmux passes 256 colours): is it a grey?"""
    greys = []
    for code in re.findall(r"[34]8;5;(\d+)", escaped):
        index = int(code)
        cube = index - 16
        greys.append(index in (0, 7, 8, 15) or index >= 232
                     or (0 <= cube < 216 and cube // 36 == cube // 6 % 6 == cube % 6))
    return greys


def test_no_color_and_resizing_in_a_real_terminal(paused: Paused, terminal: Terminal) -> None:
    review(paused, terminal)
    assert not all(colours(terminal.tmux("capture-pane", "-p", "-e", "-t", terminal.name)))  # some colour
    terminal.keys("q")
    assert terminal.exit_status() == 0
    terminal.kill()
    terminal.status_file.unlink()
    terminal.start([sys.executable, "-m", "lg", "review"], paused.root,
                   {**paused.env, "LG_USER": "bob", "NO_COLOR": "1"})
    terminal.wait_for("q quit")
    greys = colours(terminal.tmux("capture-pane", "-p", "-e", "-t", terminal.name))
    assert greys and all(greys)  # NO_COLOR: greys only
    terminal.tmux("resize-window", "-t", terminal.name, "-x", "70", "-y", "20")
    terminal.wait_for("This terminal is 70x20: lg review needs at least 80x24")
    terminal.tmux("resize-window", "-t", terminal.name, "-x", "80", "-y", "24")
    shown = terminal.wait_for("effects gate bump.effects")
    assert "needs at least" not in shown
    terminal.keys("q")
    assert terminal.exit_status() == 0
