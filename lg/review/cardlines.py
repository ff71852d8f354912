"""A stored card (lg.approvals.card) as the reviewer's lines: the same facts `lg show` prints, styled with rich.

Colours carry meaning but never alone: the level is also a word and a symbol, a change's type is also a word, so
the card reads the same under NO_COLOR. User content (commands, paths, diffs, outputs) is escaped exactly as `lg
show` escapes it, so a control character or a bidirectional mark cannot hide or disguise text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.syntax import Syntax
from rich.text import Text

from lg.approvals.card import KIND_TEXT, shown
from lg.review.document import CardDocument, Line
from lg.runs.states import GateStatus

LEVEL_STYLE = {"green": "green", "yellow": "yellow", "orange": "dark_orange", "red": "red"}
LEVEL_SYMBOL = {"green": "🟢", "yellow": "🟡", "orange": "🟠", "red": "🔴"}
HEADER_STYLE = {"green": "bold black on green", "yellow": "bold black on yellow",
                "orange": "bold black on dark_orange", "red": "bold white on red"}
CHANGE_STYLE = {"create": "green", "modify": "yellow", "delete": "red", "chmod": "magenta", "symlink": "cyan"}


def level_of(card: Mapping[str, Any]) -> str:
    level = str(card.get("level", "green"))
    return level if level in LEVEL_STYLE else "red"  # an unknown level is shown as the most severe


def header(card: Mapping[str, Any], status: str, outcome: str | None) -> Text:
    """The card's one-line title: symbol and level on the level's colour, then what the gate is."""
    level = level_of(card)
    title = Text.assemble((f" {LEVEL_SYMBOL[level]} {level.upper()} ", HEADER_STYLE[level]), " ",
                          (f"{card.get('kind')} gate ", "bold"), shown(card.get("gate", "")),
                          "  run ", shown(card.get("run", "")))
    if status != GateStatus.OPEN:
        title.append(f"  {status.upper()}", style="bold reverse")
        if outcome:
            title.append(f" {shown(outcome)}", style="italic")
    return title


def card_document(card: Mapping[str, Any], digest: str, decisions: Sequence[str] = ()) -> CardDocument:
    lines: list[Line] = []
    lines.extend(_intro(card, digest))
    lines.extend(_rules(card.get("rules") or []))
    lines.extend(_command(str(card.get("command", ""))))
    lines.extend(_profile(card.get("profile") or {}))
    if card.get("call"):
        lines.extend(_call(card["call"], card.get("diff") or []))
    if card.get("kind") == "effects":
        lines.extend(_changes(card.get("changes") or []))
        lines.extend(_outputs(card.get("outputs") or {}))
    if decisions:
        lines.append(Line(Text("decisions so far:", style="bold"), "decisions"))
        lines.extend(Line(Text(f"  {shown(text)}"), "decisions", 2) for text in decisions)
    return CardDocument(lines)


def _intro(card: Mapping[str, Any], digest: str) -> Iterable[Line]:
    step = shown(card.get("step", ""))
    name = card.get("step_name")
    if name and name != card.get("step"):
        step += f" ({shown(name)})"
    yield Line(Text.assemble(("step ", "bold"), step), "header")
    yield Line(Text(KIND_TEXT.get(str(card.get("kind")), str(card.get("kind")))), "header")
    yield Line(Text.assemble(("digest ", "bold"), digest), "header")
    for reason in card.get("reasons") or []:
        yield Line(Text.assemble(("gate: ", "bold"), shown(reason)), "header", 6)


def _rules(rules: Sequence[Mapping[str, Any]]) -> Iterable[Line]:
    yield Line(Text(f"rules fired ({len(rules)}):" if rules else "rules fired: none", style="bold"), "rules")
    for rule in rules:
        level = str(rule.get("level", ""))
        text = Text.assemble("  ", (f"{level:<7}", LEVEL_STYLE.get(level, "")), " ", (str(rule.get("rule")), "bold"),
                             f": {shown(rule.get('reason', ''))}")
        if rule.get("span"):
            text.append("  [")
            text.append(shown(rule["span"]), style="cyan")
            text.append("]")
        if rule.get("program"):
            text.append(f"  (program: {shown(rule['program'])})")
        yield Line(text, "rules", 10)


def _command(command: str) -> Iterable[Line]:
    yield Line(Text("command:", style="bold"), "command")
    source = "\n".join(shown(line) for line in command.rstrip("\n").split("\n"))
    highlighted = Syntax(source, "bash", theme="ansi_dark", background_color="default").highlight(source)
    highlighted.rstrip()
    for line in highlighted.split("\n", allow_blank=True):
        yield Line(Text.assemble(("  │ ", "dim"), line), "command", 4)


def _call(call: Mapping[str, Any], diff: Sequence[str]) -> Iterable[Line]:
    """A tool-call gate (an agent step): the call in full, the model's stated reason, a write's diff."""
    yield Line(Text.assemble(("call ", "bold"), shown(call.get("name", ""))), "call")
    yield Line(Text.assemble(("reason (the model's): ", "bold"), shown(call.get("reason", ""))), "call", 22)
    for key, value in (call.get("arguments") or {}).items():
        rows = str(value).rstrip("\n").split("\n")
        yield Line(Text.assemble(f"  {shown(key)}: ", shown(rows[0])), "call", 4)
        yield from (Line(Text(f"    {shown(row)}"), "call", 4) for row in rows[1:])
    if diff:
        yield Line(Text("diff:", style="bold"), "diff")
        yield from (Line(_diff_line(shown(row)), "diff", 4) for row in diff)


def _profile(profile: Mapping[str, Any]) -> Iterable[Line]:
    yield Line(Text.assemble(("profile ", "bold"), f"{shown(profile.get('name'))} (user {profile.get('user')}, "
                             f"{profile.get('vcpus')} vCPU, {profile.get('memory_mib')} MiB)"), "profile")
    relaxations = profile.get("relaxations") or []
    text = Text("relaxations: ", style="bold")
    if relaxations:
        text.append(", ".join(shown(r) for r in relaxations), style="yellow")
    else:
        text.append("none")
    yield Line(text, "relaxations", 13)


def _changes(changes: Sequence[Mapping[str, Any]]) -> Iterable[Line]:
    yield Line(Text(f"changes ({len(changes)}):" if changes else "changes: none", style="bold"), "changes")
    for change in changes:
        kind = str(change.get("change", ""))
        style = CHANGE_STYLE.get(kind, "")
        text = Text.assemble("  ", (f"{kind:<7}", f"bold {style}"), " ", (shown(change.get("path")), f"bold {style}"))
        detail = _change_detail(change)
        if detail:
            text.append(f"  ({detail})", style="dim")
        yield Line(text, "changes", 10)
        if change.get("note"):
            yield Line(Text(f"    {shown(change['note'])}", style="italic"), "changes", 4)
        diff = change.get("diff")
        if diff:
            yield from (Line(_diff_line(shown(row)), "diff", 4) for row in str(diff).rstrip("\n").split("\n"))


def _change_detail(change: Mapping[str, Any]) -> str:
    detail = []
    if change.get("size") is not None and change.get("change") != "delete":
        detail.append(f"{change['size']} B")
    if change.get("mode") and change.get("old_mode") and change["mode"] != change["old_mode"]:
        detail.append(f"mode {change['old_mode']} -> {change['mode']}")
    elif change.get("mode") and change.get("change") == "create":
        detail.append(f"mode {change['mode']}")
    if change.get("symlink_target") is not None:
        detail.append(f"-> {shown(change['symlink_target'])}")
    return ", ".join(detail)


def _diff_line(row: str) -> Text:
    style = ""
    if row.startswith(("+++", "---")):
        style = "bold"
    elif row.startswith("+"):
        style = "green"
    elif row.startswith("-"):
        style = "red"
    elif row.startswith("@@"):
        style = "cyan"
    return Text(f"    {row}", style=style)


def _outputs(outputs: Mapping[str, Any]) -> Iterable[Line]:
    if outputs:
        yield Line(Text("outputs:", style="bold"), "outputs")
        yield from (Line(Text(f"  {shown(name)} = {shown(value)}"), "outputs", 4) for name, value in outputs.items())
