"""Diff cards: what an approver sees, and the subject (what the approval is bound to) behind it.

The *subject* is everything that decides what would happen if the gate were approved: the command, the VM
profile, and for an effects gate every held change (with its SHA-256 and the host content it replaces) and
every output. Its digest is what a decision names. The *card* presents the subject to a human: risk level,
matched rules, relaxations, and a unified diff per text file (truncated sensibly, binary files noted, secrets
masked). Nothing is cut sideways: the JSON card holds every line whole, the terminal folds long lines at its width,
and characters that could hide text (escapes, carriage returns, bidirectional marks) are shown as escapes.
Cards are built once, when the gate opens, by the process that has the secrets to mask; `lg show`
prints the stored card.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lg.model import FileChange
from lg.policy.model import Assessment
from lg.security.profile import VmProfile

MAX_DIFF_BYTES = 1024 * 1024  # larger files are noted, not diffed
MAX_DIFF_LINES = 120  # per file
MAX_CARD_DIFF_LINES = 1500  # over the whole card; later files say their diff was left out
COLOURS = {"green": "32", "yellow": "33", "orange": "38;5;208", "red": "31"}
KIND_TEXT = {
    "explicit": "explicit gate: the pipeline asks for approval before this step runs",
    "before": "before gate: the step's command is graded at or over the policy's threshold; nothing has run",
    "effects": "effects gate: the step ran in a throwaway VM; what it did is held, not applied",
    "tool": "tool-call gate: an agent asks to make this call in its VM; it has not run (the VM is saved)",
}


@dataclass(frozen=True)
class CardInput:
    run_id: str
    step_id: str
    step_name: str
    kind: str
    gate_id: str
    script: str
    profile: VmProfile
    assessment: Assessment | None
    reasons: tuple[str, ...] = ()  # why the gate exists beyond the grade (approve:, a policy's required gate)
    changes: tuple[FileChange, ...] = ()
    outputs: Mapping[str, str] | None = None
    workspace: Path | None = None
    held: Path | None = None
    base: Mapping[str, str | None] | None = None
    call: Mapping[str, Any] | None = None  # a tool-call gate's call: name, arguments, reason (lg.agent)
    call_diff: str | None = None  # for a write_file call: the unified diff it would make


def build(card_input: CardInput, mask: Callable[[str], str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(subject, card) for a gate."""
    profile = _profile_view(card_input.profile)
    subject: dict[str, Any] = {
        "run": card_input.run_id,
        "gate": card_input.gate_id,
        "step": card_input.step_id,
        "kind": card_input.kind,
        "script_sha256": hashlib.sha256(card_input.script.encode()).hexdigest(),
        "profile": profile,
    }
    if card_input.kind == "effects":
        subject["changes"] = [_change_subject(change, card_input.base or {}) for change in card_input.changes]
        subject["outputs"] = {name: hashlib.sha256(value.encode()).hexdigest()
                              for name, value in sorted((card_input.outputs or {}).items())}
    if card_input.call is not None:
        subject["call_sha256"] = hashlib.sha256(json.dumps(card_input.call, sort_keys=True).encode()).hexdigest()
    assessment = card_input.assessment
    card: dict[str, Any] = {
        "run": card_input.run_id,
        "gate": card_input.gate_id,
        "step": card_input.step_id,
        "step_name": card_input.step_name,
        "kind": card_input.kind,
        "level": assessment.level.label if assessment else "green",
        "rules": [match.to_json() for match in assessment.matches] if assessment else [],
        "reasons": list(card_input.reasons),
        "command": mask(card_input.script),
        "profile": profile,
    }
    if card_input.kind == "effects":
        budget = _Budget(MAX_CARD_DIFF_LINES)
        card["changes"] = [_change_card(change, card_input, mask, budget) for change in card_input.changes]
        card["outputs"] = {name: mask(value) for name, value in sorted((card_input.outputs or {}).items())}
    if card_input.call is not None:
        call = card_input.call
        card["call"] = {"name": call.get("name"), "reason": mask(str(call.get("reason") or "")),
                        "arguments": {key: mask(str(value)) for key, value in (call.get("arguments") or {}).items()
                                      if key != "reason"}}
        if card_input.call_diff is not None:
            card["diff"] = mask(card_input.call_diff).rstrip("\n").split("\n")[:MAX_CARD_DIFF_LINES]
    return subject, card


def _profile_view(profile: VmProfile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "user": profile.user,
        "vcpus": profile.machine.vcpus,
        "memory_mib": profile.machine.memory_mib,
        "relaxations": [f"{r.kind}: {r.detail}" if r.detail else r.kind for r in profile.relaxations()],
    }


def _change_subject(change: FileChange, base: Mapping[str, str | None]) -> dict[str, Any]:
    return {"path": change.path, "kind": change.kind, "sha256": change.sha256, "size": change.size,
            "mode": change.mode, "symlink_target": change.symlink_target, "base_sha256": base.get(change.path)}


class _Budget:
    def __init__(self, lines: int) -> None:
        self.left = lines


def display_kind(change: FileChange, base_sha256: str | None) -> str:
    if change.symlink_target is not None:
        return "symlink"
    if change.kind == "created":
        return "create"
    if change.kind == "deleted":
        return "delete"
    if base_sha256 == change.sha256 and change.mode != change.old_mode:
        return "chmod"
    return "modify"


def _change_card(change: FileChange, card_input: CardInput, mask: Callable[[str], str],
                 budget: _Budget) -> dict[str, Any]:
    base = (card_input.base or {}).get(change.path)
    view: dict[str, Any] = {
        "path": change.path,
        "change": display_kind(change, base),
        "size": change.size,
        "mode": _octal(change.mode),
        "old_mode": _octal(change.old_mode),
        "symlink_target": change.symlink_target,
        "sha256": change.sha256,
        "diff": None,
        "note": None,
    }
    if view["change"] in ("create", "modify") and card_input.held is not None:
        view["diff"], view["note"] = _diff(change, card_input, mask, budget)
    return view


def _octal(mode: int | None) -> str | None:
    return f"{mode & 0o7777:04o}" if mode is not None else None


def _diff(change: FileChange, card_input: CardInput, mask: Callable[[str], str],
          budget: _Budget) -> tuple[str | None, str | None]:
    assert card_input.held is not None  # noqa: S101 - checked by the caller
    parts = PurePosixPath(change.path).parts
    new_path = card_input.held.joinpath(*parts)
    old_path = card_input.workspace.joinpath(*parts) if card_input.workspace and change.kind == "modified" else None
    sizes = [p.stat().st_size for p in (new_path, old_path) if p is not None and p.is_file()]
    if any(size > MAX_DIFF_BYTES for size in sizes):
        return None, f"large file ({max(sizes)} bytes): diff not shown, compare by digest"
    new_text = _text(new_path)
    old_text = _text(old_path) if old_path is not None and old_path.is_file() and not old_path.is_symlink() else ""
    if new_text is None or old_text is None:
        return None, "binary file: diff not shown, compare by digest"
    if budget.left <= 0:
        return None, "diff left out: the card's diff budget is used up (see the file itself)"
    lines = list(difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                      fromfile=f"a/{change.path}" if old_path else "/dev/null",
                                      tofile=f"b/{change.path}", n=3))
    limit = min(MAX_DIFF_LINES, budget.left)
    note = None
    if len(lines) > limit:
        note = f"diff truncated: {limit} of {len(lines)} lines shown"
        lines = lines[:limit]
    budget.left -= len(lines)
    text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
    return mask(text), note


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- terminal rendering -------------------------------------------------------------------------------------


def render(card: Mapping[str, Any], *, digest: str, status: str, outcome: str | None, colour: bool,
           width: int | None = None) -> str:
    width = width or shutil.get_terminal_size((100, 24)).columns
    paint = _painter(colour)
    level = str(card.get("level", "green"))
    out: list[str] = []
    title = f"gate {card['gate']}  run {card['run']}  step {_shown(card['step'])}"
    if card.get("step_name") and card["step_name"] != card["step"]:
        title += f" ({_shown(card['step_name'])})"
    out.append(paint("1", title))
    out.append(f"  {KIND_TEXT.get(str(card['kind']), card['kind'])}")
    out.append(f"  risk: {paint(COLOURS.get(level, '0'), level.upper())}   status: {status}"
               + (f" ({outcome})" if outcome else ""))
    out.append(f"  digest: {digest}")
    for reason in card.get("reasons", []):
        out.append(f"  gate: {reason}")
    if card.get("rules"):
        out.append("  rules:")
        for rule in card["rules"]:
            span = f"  [{_shown(rule['span'])}]" if rule.get("span") else ""
            span += f"  (program: {_shown(rule['program'])})" if rule.get("program") else ""
            level_text = f"{rule['level']:<7}"
            out.append(f"    {paint(COLOURS.get(rule['level'], '0'), level_text)} {rule['rule']}: "
                       f"{rule['reason']}{span}")
    out.append("  command:")
    # split on newlines only: splitlines() also breaks on \r and friends, which must show, not vanish
    out.extend(f"    | {_shown(line)}" for line in str(card.get("command", "")).rstrip("\n").split("\n"))
    profile = card.get("profile", {})
    out.append(f"  profile: {profile.get('name')} (user {profile.get('user')}, {profile.get('vcpus')} vCPU, "
               f"{profile.get('memory_mib')} MiB)")
    relaxations = profile.get("relaxations") or []
    out.append("  relaxations: " + (", ".join(relaxations) if relaxations else "none"))
    if card.get("call"):
        out.extend(_render_call(card["call"], card.get("diff"), paint))
    if card.get("kind") == "effects":
        out.extend(_render_changes(card.get("changes", []), paint))
        outputs = card.get("outputs") or {}
        if outputs:
            out.append("  outputs:")
            out.extend(f"    {_shown(name)} = {_shown(value)}" for name, value in outputs.items())
    return "\n".join(row for line in out for row in _wrap(line, width))


def _render_changes(changes: Sequence[Mapping[str, Any]], paint: Callable[[str, str], str]) -> list[str]:
    out = [f"  changes ({len(changes)}):" if changes else "  changes: none"]
    for change in changes:
        detail = []
        if change.get("size") is not None and change["change"] != "delete":
            detail.append(f"{change['size']} B")
        if change.get("mode") and change.get("old_mode") and change["mode"] != change["old_mode"]:
            detail.append(f"mode {change['old_mode']} -> {change['mode']}")
        elif change.get("mode") and change["change"] == "create":
            detail.append(f"mode {change['mode']}")
        if change.get("symlink_target") is not None:
            detail.append(f"-> {_shown(change['symlink_target'])}")
        suffix = f"  ({', '.join(detail)})" if detail else ""
        kind_text = f"{change['change']:<7}"
        out.append(f"    {paint('1', kind_text)} {_shown(change['path'])}{suffix}")
        if change.get("note"):
            out.append(f"      {change['note']}")
        for line in (change.get("diff") or "").rstrip("\n").split("\n") if change.get("diff") else []:
            out.append("      " + _diff_line(_shown(line), paint))
    return out


def _render_call(call: Mapping[str, Any], diff: Sequence[str] | None,
                 paint: Callable[[str, str], str]) -> list[str]:
    """A tool-call gate: the call in full, the model's stated reason, and for a write the diff it would make."""
    out = [f"  call: {paint('1', _shown(call.get('name')))}", f"  reason (the model's): {_shown(call.get('reason'))}"]
    for key, value in (call.get("arguments") or {}).items():
        lines = str(value).rstrip("\n").split("\n")
        out.append(f"    {_shown(key)}: {_shown(lines[0])}")
        out.extend(f"      {_shown(line)}" for line in lines[1:])
    if diff:
        out.append("  diff:")
        out.extend("    " + _diff_line(_shown(line), paint) for line in diff)
    return out


def _diff_line(line: str, paint: Callable[[str, str], str]) -> str:
    if line.startswith(("+++", "---")):
        return paint("1", line)
    if line.startswith("+"):
        return paint("32", line)
    if line.startswith("-"):
        return paint("31", line)
    if line.startswith("@@"):
        return paint("36", line)
    return line


def _painter(colour: bool) -> Callable[[str, str], str]:
    def paint(code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour else text

    return paint


def _wrap(line: str, width: int) -> list[str]:
    """A line folded to the terminal's width, never cut: continuation lines are indented under the first and
    marked with `↪`; colour codes take no room and a colour open at a fold is closed and reopened."""
    visible = _ANSI.sub("", line)
    if len(visible) <= width:
        return [line]
    indent = min(len(visible) - len(visible.lstrip(" ")) + 2, width // 2)
    prefix = " " * (indent - 2) + "↪ "
    rows: list[str] = []
    room, current, active, index = width, [], "", 0
    while index < len(line):
        code = _ANSI.match(line, index)
        if code:
            active = "" if code.group() == "\x1b[0m" else code.group()
            current.append(code.group())
            index = code.end()
            continue
        if room == 0:
            rows.append("".join(current) + ("\x1b[0m" if active else ""))
            current, room = [prefix, active], width - len(prefix)
        current.append(line[index])
        room -= 1
        index += 1
    rows.append("".join(current))
    return rows


# Characters that would hide or disguise what a reviewer reads: control characters (an escape sequence can
# conceal text, a carriage return overwrite it), zero-width and bidirectional marks. Shown as escapes instead.
_HIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def visible(text: object) -> str:
    """User content with every hidden character made visible (for other renderers of cards: the web page)."""
    return _shown(text)


def _shown(text: object) -> str:
    """User content (commands, paths, diffs, outputs) with every hidden character made visible."""
    return _HIDDEN.sub(lambda found: found.group().encode("unicode_escape").decode(), str(text))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


shown = _shown  # public: `lg review` escapes user content exactly as the printed card does
