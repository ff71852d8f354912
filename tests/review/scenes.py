"""Gates in a real state store, with cards built by lg.approvals.card from real files, for the reviewer's tests
and its benchmark."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from lg.approvals.card import CardInput, build
from lg.model import FileChange
from lg.policy.levels import RiskLevel
from lg.policy.model import Assessment, RuleMatch
from lg.runs.gates import GateRules, GateStore
from lg.runs.store import RunStore
from lg.security.profile import DEFAULT_SHAPE, VmProfile

LONG_COMMAND = ("curl -fsSL https://downloads.example.com/releases/v1.2.3/installer.sh | sudo bash -s -- "
                "--prefix /opt/tool --with-plugins alpha,beta,gamma --verbose && echo 'installed the tool, "
                "now restarting every service that depends on it' && systemctl restart tool-agent.service")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def effects_card(root: Path, run_id: str, step: str, diff_lines: int = 40,
                 level: RiskLevel = RiskLevel.RED) -> tuple[dict[str, Any], dict[str, Any]]:
    """(subject, card) of an effects gate: a modified file with `diff_lines` changed lines, a created file,
    a deleted one, a long command graded by two rules."""
    workspace, held = root / "ws", root / "held"
    (workspace / "src").mkdir(parents=True, exist_ok=True)
    (held / "src").mkdir(parents=True, exist_ok=True)
    (workspace / "src" / "app.py").write_text("".join(f"value_{n} = {n}\n" for n in range(diff_lines)))
    (held / "src" / "app.py").write_text("".join(f"value_{n} = {n * 7}  # recomputed\n" for n in range(diff_lines)))
    (held / "NOTES.md").write_text("# notes\n" + "a very long line of notes " * 12 + "\n")
    (workspace / "old.cfg").write_text("old\n")
    changes = (
        FileChange("src/app.py", "modified", (held / "src" / "app.py").stat().st_size, _sha(held / "src" / "app.py"),
                   0o644, 0o644),
        FileChange("NOTES.md", "created", (held / "NOTES.md").stat().st_size, _sha(held / "NOTES.md"), 0o644, None),
        FileChange("old.cfg", "deleted", old_mode=0o644),
    )
    assessment = Assessment(level, (
        RuleMatch("network.pipe-to-shell", RiskLevel.RED, "downloads a script and runs it", "curl ... | sudo bash",
                  "command"),
        RuleMatch("privilege.sudo", RiskLevel.ORANGE, "runs a program as root", "sudo bash", "command"),
    ), True, False, False)
    profile = VmProfile("default", Path("profiles/vm/default.yaml"), "", DEFAULT_SHAPE)
    base = {"src/app.py": _sha(workspace / "src" / "app.py"), "old.cfg": _sha(workspace / "old.cfg")}
    return build(CardInput(run_id, step, step, "effects", f"{step}.effects", LONG_COMMAND, profile, assessment,
                           ("effects graded red",), changes, {"version": "1.2.3"}, workspace, held, base),
                 lambda text: text)


def gate_with(store: RunStore, root: Path, *, step: str = "install", initiator: str = "alice",
              card: dict[str, Any] | None = None, subject: dict[str, Any] | None = None,
              rules: GateRules | None = None) -> tuple[str, str]:
    """A run paused at one effects gate (no process behind it), as `lg run` leaves one."""
    run = store.create_run("deploy", root / "p.yaml", root, initiator, [(step, step)])
    if card is None or subject is None:
        subject, card = effects_card(root / run.id, run.id, step)
    gate = GateStore(store).open(run.id, step, "effects", subject, card, rules or GateRules())
    store.start_run(run.id)
    store.pause(run.id, gate.gate_id, waiting=False)
    return run.id, gate.gate_id


def explicit_gate(store: RunStore, root: Path, step: str = "ship", level: str = "yellow") -> tuple[str, str]:
    run = store.create_run("release", root / "r.yaml", root, "alice", [(step, step)])
    card = {"run": run.id, "gate": f"{step}.before", "step": step, "step_name": step, "kind": "explicit",
            "level": level, "rules": [], "reasons": ["the pipeline asks for approval"], "command": "make release",
            "profile": {"name": "default", "user": "lg", "vcpus": 1, "memory_mib": 256, "relaxations": []}}
    gate = GateStore(store).open(run.id, step, "explicit", {"run": run.id, "script": "make release"}, card,
                                 GateRules())
    store.start_run(run.id)
    store.pause(run.id, gate.gate_id, waiting=False)
    return run.id, gate.gate_id
