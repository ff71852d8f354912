"""The reviewer's modal questions: a comment, a reason, a key, a confirmation, and the help page.

Each answers through `dismiss`: the text entered, or None when the reviewer backs out (Escape). A rejection's
reason is required: an empty one is refused in the dialog, as `lg reject` requires --reason.
"""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 76; height: auto; border: round $accent; padding: 0 1; background: $surface; }}
{name} Input {{ margin: 1 0 0 0; }}
{name} .hint {{ color: $text-muted; }}
{name} .error {{ color: $error; }}
"""


class TextDialog(ModalScreen[str | None]):
    """One line of text: Enter answers, Escape backs out."""

    DEFAULT_CSS = DIALOG_CSS.format(name="TextDialog")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str, hint: str, *, required: bool, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.hint = hint
        self.required = required
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="title")
            yield Input(value=self.value, placeholder=self.placeholder, id="answer")
            yield Static(self.hint, classes="hint", id="hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if self.required and not text:
            hint = self.query_one("#hint", Static)
            hint.update("a reason is required: type it, or Escape to go back")
            hint.set_class(True, "error")
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """y decides, n or Escape backs out."""

    DEFAULT_CSS = DIALOG_CSS.format(name="ConfirmDialog")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question)
            yield Static("y: yes, decide   n / Escape: no, go back", classes="hint")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


HELP = """\
lg review: decide pending approval gates
  j k  ↓ ↑          scroll the card a row    PgDn PgUp space  a page
  g G  Home End     top / bottom             / TEXT Enter     search
  n N               next / previous match    ] [  Tab         other gate
  a                 approve (optional comment)
  r                 reject (a reason is required)
  s                 sign your decisions with an SSH key from now on
  ?  q              this help, quit
A decision is bound to the digest on the card: a gate that changes or is
decided elsewhere meanwhile is shown so, and is never decided twice.
A red gate asks for confirmation first.        Escape closes this help."""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = DIALOG_CSS.format(name="HelpScreen")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "close")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(HELP)

    def action_close(self) -> None:
        self.dismiss(None)
