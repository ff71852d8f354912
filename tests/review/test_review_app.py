"""`lg review` driven by Textual's own test pilot (App.run_test): keys in, screen content and decisions out.

The gates live in a real state store; decisions go through the same lg.approvals.decide as `lg approve` and are
read back from the store.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from textual.pilot import Pilot

from lg.approvals.decide import decide
from lg.review.app import ReviewApp
from lg.review.cardview import CardView
from lg.review.source import LocalGateSource
from lg.runs.gates import GateRules, GateStore
from lg.runs.store import RunStore
from tests.review.scenes import LONG_COMMAND, explicit_gate, gate_with

Scenario = Callable[[ReviewApp, Pilot[int]], Awaitable[None]]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    monkeypatch.setenv("LG_USER", "bob")  # the runs are alice's: bob may approve them
    monkeypatch.delenv("NO_COLOR", raising=False)
    return RunStore(tmp_path / "state")


def drive(store: RunStore, scenario: Scenario, size: tuple[int, int] = (100, 30), **options: Any) -> ReviewApp:
    app = ReviewApp(LocalGateSource(store), poll_seconds=options.pop("poll_seconds", 0.1), **options)

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            for _ in range(40):  # the first card painted (a loaded machine can take a few frames)
                if "[1/" in screen(app) or "needs at least" in screen(app):
                    break
                await pilot.pause(0.05)
            await scenario(app, pilot)

    asyncio.run(main())
    return app


def screen(app: ReviewApp) -> str:
    """The whole screen as plain text, as the compositor would send it to the terminal."""
    update = app.screen._compositor.render_update(full=True)
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), record=True,
                      force_terminal=True, color_system="truecolor", legacy_windows=False)
    console.print(update)
    return console.export_text()


def indicator(app: ReviewApp) -> str:
    return str(app.query_one("#keys").render()).split()[0]


async def settle(pilot: Pilot[int], rounds: int = 3) -> None:
    for _ in range(rounds):
        await pilot.pause(0.05)


def test_the_list_and_the_card_show_what_a_reviewer_needs(store: RunStore, tmp_path: Path) -> None:
    run_id, _ = gate_with(store, tmp_path)
    other, _ = explicit_gate(store, tmp_path)
    seen: dict[str, str] = {}

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        seen["screen"] = screen(app)
        seen["card"] = "\n".join(app.query_one(CardView).document.plain)
        seen["scrollbar"] = str(app.query_one(CardView).show_vertical_scrollbar)

    app = drive(store, scenario)
    text = seen["screen"]
    assert "2 open gates" in text
    for cell in ("run", "step", "kind", "grade", "age", "approvals", run_id, "install", "effects", "🔴 red", "0/1",
                 other, "ship", "explicit", "🟡 yellow"):
        assert cell in text, cell
    assert "🔴 RED  effects gate install.effects" in text  # the header: symbol, level, gate
    assert "[1/" in text and seen["scrollbar"] == "True"
    card = seen["card"]
    for part in ("network.pipe-to-shell: downloads a script and runs it", "privilege.sudo",
                 "relaxations: seccomp_off, apparmor_off", "modify  src/app.py", "create  NOTES.md",
                 "delete  old.cfg", "-value_1 = 1", "+value_1 = 7  # recomputed", "outputs:", "version = 1.2.3"):
        assert part in card, part
    assert app.return_value is None  # still open when the test left


def test_long_lines_are_folded_never_cut(store: RunStore, tmp_path: Path) -> None:
    gate_with(store, tmp_path)
    rows: list[str] = []

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        rows.extend(screen(app).splitlines())

    drive(store, scenario, size=(80, 24))
    start = next(i for i, row in enumerate(rows) if "│ curl" in row)
    pieces = [rows[start].split("│ ", 1)[1].rstrip(" ▁▂▃▄▅▆▇█")]
    for row in rows[start + 1:]:
        if "↪ " not in row:
            break
        pieces.append(row.split("↪ ", 1)[1].rstrip(" ▁▂▃▄▅▆▇█"))
    assert len(pieces) >= 3 and "".join(pieces) == LONG_COMMAND
    assert all(len(row) <= 80 for row in rows)


def test_keys_scroll_and_the_indicator_follows(store: RunStore, tmp_path: Path) -> None:
    gate_with(store, tmp_path)
    seen: list[str] = []

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        card = app.query_one(CardView)
        total = card.document.rows
        height = card.scrollable_content_region.height
        for keys in (("j",), ("j", "j"), ("k",), ("down",), ("up",), ("pagedown",), ("pageup",), ("G",), ("g",),
                     ("end",), ("home",)):
            await pilot.press(*keys)
            seen.append(indicator(app))
        expected = [2, 4, 3, 4, 3, 3 + height - 1, 3, total - height + 1, 1, total - height + 1, 1]
        assert seen == [f"[{n}/{total}]" for n in expected]

    drive(store, scenario)


def test_search_finds_the_next_matching_line(store: RunStore, tmp_path: Path) -> None:
    gate_with(store, tmp_path)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        card = app.query_one(CardView)
        await pilot.press("slash", *"VALUE_30", "enter")
        assert card.visible_text()[0].strip() == "-value_30 = 30"
        await pilot.press("n")  # the next match is near the end: the card scrolls as far as it goes
        assert "+value_30 = 210  # recomputed" in [row.strip() for row in card.visible_text()]
        assert card.scroll_y == card.max_scroll_y
        await pilot.press("N")
        assert card.visible_text()[0].strip() == "-value_30 = 30"
        await pilot.press("slash", *"no such text", "enter")
        assert "not found in this card" in screen(app)
        assert card.visible_text()[0].strip() == "-value_30 = 30"  # where it was

    drive(store, scenario)


def test_approving_a_red_gate_asks_first_then_records_one_decision(store: RunStore, tmp_path: Path) -> None:
    run_id, gate_id = gate_with(store, tmp_path)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("a")
        assert "is graded RED" in screen(app)
        await pilot.press("n")  # backs out: nothing decided
        assert "nothing decided" in screen(app)
        await pilot.press("a", "y", *"checked the installer", "enter")
        await settle(pilot)
        text = screen(app)
        assert "approve recorded for install.effects; gate is approved (approved by bob)" in text
        assert f"lg resume {run_id}" in text and "APPROVED" in text
        await pilot.press("a")  # again: refused, not asked
        assert "is already approved" in screen(app) and "cannot be decided again" in screen(app)
        await pilot.press("q")

    app = drive(store, scenario)
    gates = GateStore(store)
    gate = gates.gate(run_id, gate_id)
    assert gate is not None and gate.status == "approved"
    (decision,) = gates.decisions(gate)
    assert (decision.approver, decision.verdict, decision.comment, decision.digest) == (
        "bob", "approve", "checked the installer", gate.digest)
    assert app.return_value == 0 and app.decided == [(run_id, gate_id, "approve")]
    assert [r.kind for r in store.audit_log.records() if r.kind.startswith("gate.")][-2:] == ["gate.decision",
                                                                                         "gate.approved"]


def test_a_rejection_needs_a_reason(store: RunStore, tmp_path: Path) -> None:
    run_id, gate_id = explicit_gate(store, tmp_path)  # yellow: no confirmation

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("r", "enter")
        assert "a reason is required" in screen(app)
        await pilot.press(*"not this quarter/q? ajr", "enter")  # keys that mean something outside a dialog
        await settle(pilot)
        assert "reject recorded for ship.before; gate is rejected (rejected by bob: not this quarter/q? ajr)" in (
            screen(app))

    drive(store, scenario)
    gate = GateStore(store).gate(run_id, gate_id)
    assert gate is not None and gate.status == "rejected"


def test_escape_backs_out_of_a_decision(store: RunStore, tmp_path: Path) -> None:
    run_id, gate_id = explicit_gate(store, tmp_path)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("a", *"hmm", "escape")
        assert "nothing decided" in screen(app)

    drive(store, scenario)
    gate = GateStore(store).gate(run_id, gate_id)
    assert gate is not None and gate.is_open and GateStore(store).decisions(gate) == []


def test_a_gate_decided_elsewhere_updates_in_place_and_cannot_be_decided_twice(store: RunStore,
                                                                              tmp_path: Path) -> None:
    run_id, gate_id = explicit_gate(store, tmp_path)
    gates = GateStore(store)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        assert "open" in screen(app)
        gate = gates.gate(run_id, gate_id)
        assert gate is not None
        decide(gates, store.run(run_id), gate, "approve", "from another terminal", user="carol")
        await settle(pilot, 6)  # the reviewer polls every 0.1 s here
        text = screen(app)
        assert "APPROVED approved by carol" in text and "decided elsewhere" in text and "0 open gates" in text
        await pilot.press("a")
        assert "is already approved" in screen(app)

    drive(store, scenario)
    gate = gates.gate(run_id, gate_id)
    assert gate is not None and [d.approver for d in gates.decisions(gate)] == ["carol"]


def test_a_decision_on_a_changed_subject_is_refused(store: RunStore, tmp_path: Path) -> None:
    run_id, gate_id = explicit_gate(store, tmp_path)
    gates = GateStore(store)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("a", *"ok")
        # the step ran again and did something else while the dialog was open
        gate = gates.gate(run_id, gate_id)
        assert gate is not None
        gates.open(run_id, "ship", "explicit", {"run": run_id, "script": "make release-everything"}, gate.card,
                   GateRules())
        await pilot.press("enter")
        await settle(pilot)
        assert "not recorded" in screen(app) and "what you reviewed is not what would be approved" in screen(app)

    drive(store, scenario, poll_seconds=30)  # no poll: the decision itself must catch it
    gate = gates.gate(run_id, gate_id)
    assert gate is not None and gate.is_open and gates.decisions(gate) == []


def test_switching_gates_and_help(store: RunStore, tmp_path: Path) -> None:
    gate_with(store, tmp_path)
    explicit_gate(store, tmp_path)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        assert "install.effects" in str(app.query_one("#card-header").render())
        await pilot.press("right_square_bracket")
        assert "ship.before" in str(app.query_one("#card-header").render())
        await pilot.press("tab", "k")  # in the list: k moves up a gate
        await settle(pilot)
        assert "install.effects" in str(app.query_one("#card-header").render())
        await pilot.press("question_mark")
        assert "reject (a reason is required)" in screen(app)
        await pilot.press("escape")
        assert "reject (a reason is required)" not in screen(app)

    drive(store, scenario)


def test_a_terminal_too_small_gets_a_message_and_the_layout_comes_back(store: RunStore, tmp_path: Path) -> None:
    gate_with(store, tmp_path)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        assert "This terminal is 70x20: lg review needs at least 80x24" in screen(app)
        assert "install.effects" not in screen(app)
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        assert "needs at least" not in screen(app) and "install.effects" in screen(app)
        await pilot.resize_terminal(79, 40)
        await settle(pilot)
        assert "This terminal is 79x40" in screen(app)
        await pilot.press("q")

    assert drive(store, scenario, size=(70, 20)).return_value == 0


def test_no_color_is_honoured(store: RunStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate_with(store, tmp_path)

    def colours(app: ReviewApp) -> set[tuple[int, int, int]]:
        update = app.screen._compositor.render_update(full=True)
        console = Console(width=100, height=30, file=io.StringIO(), force_terminal=True, color_system="truecolor")
        found = set()
        for segment in console.render(update):
            for colour in (segment.style.color, segment.style.bgcolor) if segment.style else ():
                if colour is not None and colour.triplet is not None:
                    found.add(tuple(colour.triplet))
        return found

    seen: dict[str, set[tuple[int, int, int]]] = {}

    async def look(app: ReviewApp, pilot: Pilot[int]) -> None:
        seen["colours"] = colours(app)

    drive(store, look)
    assert any(len(set(c)) > 1 for c in seen["colours"])  # coloured: some non-grey
    monkeypatch.setenv("NO_COLOR", "1")
    drive(store, look)
    assert seen["colours"] and all(len(set(c)) == 1 for c in seen["colours"])  # only greys
    assert "🔴 RED" in screen_of(store)


def screen_of(store: RunStore) -> str:
    seen: list[str] = []

    async def look(app: ReviewApp, pilot: Pilot[int]) -> None:
        seen.append(screen(app))

    drive(store, look)
    return seen[0]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    key = directory / "bob"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob", "-f", str(key)], check=True)
    kind, blob = (directory / "bob.pub").read_text().split()[:2]
    (directory / "allowed_signers").write_text(f"bob@example.com {kind} {blob}\n")
    return key, directory / "allowed_signers"


def test_s_signs_decisions_with_an_ssh_key(store: RunStore, tmp_path: Path, signer: tuple[Path, Path]) -> None:
    key, allowed = signer
    run_id, gate_id = gate_with(store, tmp_path, rules=GateRules(require_signature=True, allowed_signers=str(allowed)))

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        assert "signature required" in screen(app)
        await pilot.press("s")
        field = app.screen.query_one("#answer")
        field.value = ""  # type: ignore[attr-defined]
        await pilot.press(*str(key), "enter")
        await settle(pilot)
        assert "signing with bob" in screen(app)
        await pilot.press("a", "y", *"signed off", "enter")
        await settle(pilot, 6)
        assert "gate is approved (approved by bob@example.com)" in screen(app)

    drive(store, scenario, size=(120, 30))
    gates = GateStore(store)
    gate = gates.gate(run_id, gate_id)
    assert gate is not None
    (decision,) = gates.decisions(gate)
    assert decision.signed_by == "bob@example.com" and decision.signature and decision.comment == "signed off"


def test_an_unsigned_decision_on_a_gate_that_needs_one_asks_for_the_key(store: RunStore, tmp_path: Path,
                                                                       signer: tuple[Path, Path]) -> None:
    _, allowed = signer
    run_id, gate_id = gate_with(store, tmp_path, rules=GateRules(require_signature=True, allowed_signers=str(allowed)))

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("a")
        assert "Sign decisions with this SSH key" in screen(app)
        await pilot.press("escape")
        assert "nothing decided: this gate needs a signed decision" in screen(app)

    drive(store, scenario)
    gate = GateStore(store).gate(run_id, gate_id)
    assert gate is not None and gate.is_open


def test_escape_closes_the_search_and_keys_scroll_again(store: RunStore, tmp_path: Path) -> None:
    gate_with(store, tmp_path)

    async def scenario(app: ReviewApp, pilot: Pilot[int]) -> None:
        await pilot.press("slash", *"jj", "escape")
        assert indicator(app).startswith("[1/")  # typed into the search field, not scrolled
        await pilot.press("j")
        assert indicator(app).startswith("[2/")
        await pilot.press("n")
        assert "no search yet" in screen(app)  # escape searched for nothing

    drive(store, scenario)
