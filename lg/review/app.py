"""`lg review`: the terminal reviewer of pending gates (Textual).

The screen, top to bottom: a title, the list of gates (run, step, kind, grade, age, approvals, status), the
selected gate's card header (risk colour and symbol), the card itself (scrolling, folded to the width, with a
scrollbar), a message line, and the key line with the scroll position ([15/42]). The gates are polled from the
source every second: a gate decided elsewhere (another approver, `lg serve`) is shown decided, in place, and its
decision keys refuse it; a gate whose subject changed is shown again from the top.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.geometry import Size
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static

from lg.errors import LgError
from lg.review.cardlines import LEVEL_STYLE, LEVEL_SYMBOL, card_document, header
from lg.review.cardview import CardView
from lg.review.dialogs import ConfirmDialog, HelpScreen, TextDialog
from lg.review.source import GateDetail, GateRow, GateSource
from lg.runs.gates import Verdict
from lg.runs.states import GateStatus

MIN_SIZE = (80, 24)
POLL_SECONDS = 1.0
COLUMNS = ("run", "step", "kind", "grade", "age", "approvals", "status")
KEYS = "a approve · r reject · s sign · / search · ]/[ gate · ? help · q quit"


class KeyLine(Widget):
    """The bottom line: the scroll position and the keys. It changes on every scroll step, so it repaints
    itself without asking for a new layout (a Static's update would re-lay-out, and so re-render, the screen)."""

    position = reactive("[0/0]", layout=False)

    def render(self) -> Text:
        return Text.assemble((self.position, "bold"), "  ", KEYS)


class GateTable(DataTable[str | Text]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "down", show=False), Binding("k", "cursor_up", "up", show=False)]


class ReviewApp(App[int]):
    CSS = """
    Screen { layout: vertical; }
    #title { height: 1; background: $panel; text-style: bold; padding: 0 1; text-wrap: nowrap;
             text-overflow: ellipsis; }
    GateTable { height: auto; max-height: 7; }
    #card-header { height: auto; max-height: 2; }
    CardView { height: 1fr; }
    #search { display: none; height: 1; border: none; padding: 0 1; }
    #search.active { display: block; }
    #message { height: auto; max-height: 3; padding: 0 1; }
    #message.error { color: $error; text-style: bold; }
    #keys { height: 1; background: $panel; padding: 0 1; }
    #too-small { display: none; height: 1fr; content-align: center middle; text-align: center; }
    App.too-small #main { display: none; }
    App.too-small #too-small { display: block; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit_review", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("a", "decide('approve')", "approve"),
        Binding("r", "decide('reject')", "reject"),
        Binding("s", "choose_key", "sign"),
        Binding("slash", "search", "search"),
        Binding("n", "next_match(False)", "next match", show=False),
        Binding("N", "next_match(True)", "previous match", show=False),
        Binding("right_square_bracket", "other_gate(1)", "next gate", show=False),
        Binding("left_square_bracket", "other_gate(-1)", "previous gate", show=False),
    ]

    def __init__(self, source: GateSource, *, run_id: str | None = None, key: Path | None = None,
                 poll_seconds: float = POLL_SECONDS) -> None:
        super().__init__()
        self.source = source
        self.run_id = run_id
        self.key = key
        self.poll_seconds = poll_seconds
        self.rows: dict[tuple[str, str], GateRow] = {}
        self.detail: GateDetail | None = None
        self.decided: list[tuple[str, str, Verdict]] = []  # what this session decided, for its caller
        self._last_query = ""

    def compose(self) -> ComposeResult:
        with Vertical(id="main"):
            yield Static(id="title")
            table = GateTable(id="gates", cursor_type="row", zebra_stripes=False)
            table.add_columns(*COLUMNS[:-1])
            # As wide as the widest status a gate can come to.
            table.add_column(COLUMNS[-1], width=max(len(status) for status in GateStatus))
            yield table
            yield Static(id="card-header")
            yield CardView(id="card")
            yield Input(id="search", placeholder="search the card, Enter to find, Escape to close")
            yield Static(id="message")
            yield KeyLine(id="keys")
        yield Static(id="too-small")

    def on_mount(self) -> None:
        self._check_size()
        self.refresh_gates()
        self.query_one(CardView).focus()
        self.set_interval(self.poll_seconds, self.refresh_gates)

    # --- size ----------------------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        self._check_size(event.size)  # self.size may not have caught up yet

    def _check_size(self, size: Size | None = None) -> None:
        width, height = size or self.size
        small = width < MIN_SIZE[0] or height < MIN_SIZE[1]
        self.set_class(small, "too-small")
        if small:
            self.query_one("#too-small", Static).update(
                f"This terminal is {width}x{height}: lg review needs at least {MIN_SIZE[0]}x{MIN_SIZE[1]}.\n"
                "Enlarge the window, or press q to quit (lg show prints a card at any width).")

    # --- gates ---------------------------------------------------------------------------------------

    def refresh_gates(self) -> None:
        """Poll the source: new gates are added, gates decided elsewhere are shown decided, in place."""
        if not self.query(GateTable):
            return  # a poll that fires while the app closes, its widgets already gone
        try:
            pending = {row.key: row for row in self.source.pending(self.run_id)}
            for key, row in list(self.rows.items()):
                if key not in pending and row.is_open:  # decided, expired or cancelled meanwhile
                    self.rows[key] = self.source.gate(*key).row
            self.rows.update(pending)
        except LgError as error:
            self.say(f"cannot read gates: {error}", error=True)
            return
        self._fill_table()
        if self.detail is None and self.rows:
            self._select(next(iter(self.rows)))
        elif self.detail is not None and self.rows.get(self.detail.row.key) != self.detail.row:
            self._select(self.detail.row.key, reload=True)
        self._update_title()

    def _fill_table(self) -> None:
        table = self.query_one(GateTable)
        for key, row in self.rows.items():
            cells = _cells(row)
            row_key = "\0".join(key)
            if row_key not in table.rows:
                table.add_row(*cells, key=row_key)
                continue
            for column, value in zip(table.columns, cells, strict=True):
                if str(table.get_cell(row_key, column)) != str(value):
                    table.update_cell(row_key, column, value)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is not None:
            run_id, gate_id = event.row_key.value.split("\0")
            if self.detail is None or self.detail.row.key != (run_id, gate_id):
                self._select((run_id, gate_id))

    def _select(self, key: tuple[str, str], *, reload: bool = False) -> None:
        try:
            detail = self.source.gate(*key)
        except LgError as error:
            self.say(str(error), error=True)
            return
        previous = self.detail
        same_subject = previous is not None and previous.row.key == key and previous.row.digest == detail.row.digest
        self.detail = detail
        self.rows[key] = detail.row
        self._fill_table()
        self.query_one(CardView).show(card_document(detail.card, detail.row.digest, detail.decisions),
                                      keep_position=same_subject)
        self._show_header()
        if reload and previous is not None and not same_subject:
            self.say(f"gate {detail.row.gate_id} changed since it was shown: read it again", error=True)
        elif reload and previous is not None and previous.row.is_open and not detail.row.is_open:
            self.say(f"gate {detail.row.gate_id} was decided elsewhere: {detail.row.outcome or detail.row.status}",
                     error=True)

    def _show_header(self) -> None:
        detail = self.detail
        if detail is None:
            return
        text = header(detail.card, detail.row.status, detail.row.outcome)
        text.append(f"  approvals {detail.row.approvals}/{detail.row.needed}")
        if detail.row.require_signature:
            text.append("  signature required", style="bold")
        self.query_one("#card-header", Static).update(text)

    def _update_title(self) -> None:
        still = sum(1 for row in self.rows.values() if row.is_open)
        scope = f"run {self.run_id}" if self.run_id else self.source.where
        signing = f" · signing with {self.key.name}" if self.key else ""
        self.query_one("#title", Static).update(f"lg review · {still} open gate{'s' * (still != 1)}{signing} · {scope}")

    def action_other_gate(self, step: int) -> None:
        keys = list(self.rows)
        if not keys:
            return
        index = keys.index(self.detail.row.key) if self.detail else 0
        target = keys[(index + step) % len(keys)]
        self.query_one(GateTable).move_cursor(row=(index + step) % len(keys))
        self._select(target)

    # --- the key line ---------------------------------------------------------------------------------

    def on_card_view_moved(self) -> None:
        self._update_keys()

    def _update_keys(self) -> None:
        top, total = self.query_one(CardView).position
        self.query_one(KeyLine).position = f"[{top}/{total}]"

    def say(self, text: str, *, error: bool = False) -> None:
        message = self.query_one("#message", Static)
        message.update(Text(text))
        message.set_class(error, "error")

    # --- search --------------------------------------------------------------------------------------

    def action_search(self) -> None:
        field = self.query_one("#search", Input)
        field.add_class("active")
        field.value = self._last_query
        field.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "search":
            return
        self._last_query = event.value
        self._close_search()
        self._find(from_current=True)

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.query_one("#search", Input).has_focus:
            self._close_search()

    def _close_search(self) -> None:
        self.query_one("#search", Input).remove_class("active")
        self.query_one(CardView).focus()

    def action_next_match(self, backwards: bool) -> None:
        self._find(backwards=backwards)

    def _find(self, *, backwards: bool = False, from_current: bool = False) -> None:
        if not self._last_query:
            self.say("no search yet: press / to search")
            return
        found = self.query_one(CardView).find(self._last_query, backwards=backwards, from_current=from_current)
        self.say(f"/{self._last_query}" if found else f"/{self._last_query}: not found in this card", error=not found)

    # --- deciding ------------------------------------------------------------------------------------

    def action_decide(self, verdict: Verdict) -> None:
        self._decide_flow(verdict)

    @work(exclusive=True, group="decide")
    async def _decide_flow(self, verdict: Verdict) -> None:
        shown = self.detail
        if shown is None:
            self.say("no gate to decide", error=True)
            return
        row = shown.row
        try:
            current = self.source.gate(*row.key)
        except LgError as error:
            self.say(f"cannot read gate {row.gate_id}: {error}", error=True)
            return
        if not current.row.is_open or current.row.digest != row.digest:
            self._select(row.key, reload=True)
            if not current.row.is_open:
                self.say(f"gate {row.gate_id} is already {current.row.status}"
                         f"{f' ({current.row.outcome})' if current.row.outcome else ''}: it cannot be decided again",
                         error=True)
            return
        if row.require_signature and self.key is None and not await self._ask_key():
            self.say("nothing decided: this gate needs a signed decision", error=True)
            return
        if row.level == "red" and not await self.push_screen_wait(ConfirmDialog(
                f"Gate {row.gate_id} is graded RED {LEVEL_SYMBOL['red']}. {verdict.capitalize()} it?")):
            self.say("nothing decided")
            return
        answer = await self.push_screen_wait(_verdict_dialog(verdict, row, self.key))
        if answer is None:
            self.say("nothing decided")
            return
        self._record(row, verdict, answer or None)

    def _record(self, row: GateRow, verdict: Verdict, comment: str | None) -> None:
        try:
            with self._terminal_for_signing():
                result = self.source.decide(row.run_id, row.gate_id, verdict, comment, digest=row.digest,
                                            key=self.key)
        except LgError as error:
            self._select(row.key, reload=True)
            self.say(f"not recorded: {error}", error=True)
            return
        self.decided.append((row.run_id, row.gate_id, verdict))
        self.detail = None
        self._select(row.key)
        state = result.row.status + (f" ({result.row.outcome})" if result.row.outcome else "")
        self.say(f"{verdict} recorded for {row.gate_id}; gate is {state}" + (f". {result.note}" if result.note else ""))

    @contextmanager
    def _terminal_for_signing(self) -> Iterator[None]:
        """ssh-keygen may ask for the key's passphrase on the terminal: hand it the terminal while it signs."""
        if self.key is None or self.is_headless or not _needs_passphrase(self.key):
            yield
            return
        with self.suspend():
            yield

    def action_choose_key(self) -> None:
        self._key_flow()

    @work(exclusive=True, group="decide")
    async def _key_flow(self) -> None:
        await self._ask_key()

    async def _ask_key(self) -> bool:
        answer = await self.push_screen_wait(TextDialog(
            "Sign decisions with this SSH key (private key, or public key held by ssh-agent):",
            "Enter: use it for a and r from now on   Escape: back; leave empty to stop signing",
            required=False, value=str(self.key or _default_key() or "")))
        if answer is None:
            return False
        self.key = Path(answer).expanduser() if answer else None
        if self.key is not None and not self.key.is_file():
            self.say(f"{self.key}: no such key file", error=True)
            self.key = None
            return False
        self.say(f"decisions will be signed with {self.key}" if self.key else "decisions will not be signed")
        self._update_title()
        return self.key is not None

    # --- the rest ------------------------------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_quit_review(self) -> None:
        self.exit(0)


def _verdict_dialog(verdict: Verdict, row: GateRow, key: Path | None) -> TextDialog:
    signed = f", signed with {key}" if key else ""
    if verdict == "approve":
        return TextDialog(f"Approve {row.gate_id} of run {row.run_id}{signed}: comment (optional)",
                          "Enter: approve   Escape: back, nothing decided", required=False)
    return TextDialog(f"Reject {row.gate_id} of run {row.run_id}{signed}: reason (required)",
                      "Enter: reject   Escape: back, nothing decided", required=True)


def _cells(row: GateRow) -> tuple[str | Text, ...]:
    grade = Text(f"{LEVEL_SYMBOL.get(row.level, '?')} {row.level}", style=LEVEL_STYLE.get(row.level, ""))
    return (row.run_id, row.step_id, row.kind, grade, _age(time.time() - row.created),
            f"{row.approvals}/{row.needed}", row.status)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _default_key() -> Path | None:
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        candidate = Path.home() / ".ssh" / name
        if candidate.is_file():
            return candidate
    return None


def _needs_passphrase(key: Path) -> bool:
    """Whether signing with `key` would prompt: a private key that does not open with an empty passphrase."""
    ssh_keygen = shutil.which("ssh-keygen")
    if key.suffix == ".pub" or ssh_keygen is None:
        return False  # the private half is in ssh-agent; or signing will say ssh-keygen is missing
    probe = subprocess.run([ssh_keygen, "-y", "-P", "", "-f", str(key)], capture_output=True,
                           stdin=subprocess.DEVNULL, start_new_session=True, timeout=10, check=False)
    return probe.returncode != 0
