"""The card's scrolling view: a Textual line-API widget that renders only the rows on screen.

Scrolling a 5,000-line diff re-renders the visible rows and nothing else; strips are cached per row until the
width, the card or the search changes. Keys: j/k and arrows a row, PgUp/PgDn (and space/b) a page, g/G the ends.
"""

from __future__ import annotations

import re
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from lg.review.document import CardDocument, search

MATCH_STYLE = Style(reverse=True, bold=True)


class CardView(ScrollView, can_focus=True, inherit_bindings=False):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "rows(1)", "down", show=False),
        Binding("k,up", "rows(-1)", "up", show=False),
        Binding("pagedown,space,ctrl+f", "pages(1)", "page down", show=False),
        Binding("pageup,b,ctrl+b", "pages(-1)", "page up", show=False),
        Binding("g,home", "top", "top", show=False),
        Binding("G,end", "bottom", "bottom", show=False),
    ]
    DEFAULT_CSS = """
    CardView { overflow-x: hidden; overflow-y: scroll; scrollbar-size-vertical: 1; }
    """

    class Moved(Message):
        """The position changed (scroll, new card, new width): the indicator follows."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.document = CardDocument([])
        self.query_text = ""
        self._cache: dict[int, Strip] = {}
        self._width = 0

    # --- content -------------------------------------------------------------------------------------

    def show(self, document: CardDocument, *, keep_position: bool = False) -> None:
        self.document = document
        self._width = 0
        self._refold()
        if not keep_position:
            self.scroll_to(0, 0, animate=False, immediate=True)
        self.refresh()
        self.post_message(self.Moved())

    def _refold(self) -> None:
        width = self.scrollable_content_region.width
        if width <= 0 or width == self._width:
            return
        top_line = self.document.locate(int(self.scroll_y))[0] if self._width else 0
        self._width = width
        self._cache.clear()
        rows = self.document.fold(width)
        self.virtual_size = Size(width, rows)
        if top_line:  # keep the line that was at the top in view across a resize
            self.scroll_to(0, self.document.first_row(top_line), animate=False, immediate=True)

    def on_resize(self) -> None:
        self._refold()
        self.post_message(self.Moved())

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if round(old_value) != round(new_value):
            self.post_message(self.Moved())

    # --- rendering -----------------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        self._refold()
        row = int(self.scroll_y) + y
        strip = self._cache.get(row)
        if strip is None:
            strip = self._render_row(row)
            self._cache[row] = strip
        return strip

    def _render_row(self, row: int) -> Strip:
        base = self.rich_style
        if row >= self.document.rows:
            return Strip.blank(self._width, base)
        text = self.document.row(row)
        if self.query_text:
            text.highlight_regex(re.compile(re.escape(self.query_text), re.IGNORECASE), MATCH_STYLE)
        segments = Segment.apply_style(text.render(self.app.console), base)
        return Strip(segments).adjust_cell_length(self._width, base)

    # --- position ------------------------------------------------------------------------------------

    @property
    def position(self) -> tuple[int, int]:
        """(first row on screen, 1-based; total rows) for the [15/42] indicator."""
        total = self.document.rows
        return (min(int(self.scroll_y) + 1, total), total)

    def action_rows(self, count: int) -> None:
        self.scroll_to(y=self.scroll_y + count, animate=False, immediate=True)

    def action_pages(self, count: int) -> None:
        page = max(1, self.scrollable_content_region.height - 1)
        self.scroll_to(y=self.scroll_y + count * page, animate=False, immediate=True)

    def action_top(self) -> None:
        self.scroll_to(y=0, animate=False, immediate=True)

    def action_bottom(self) -> None:
        self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)

    # --- search --------------------------------------------------------------------------------------

    def find(self, query: str, *, backwards: bool = False, from_current: bool = False) -> bool:
        """Scroll the next line containing `query` (case-insensitive) to the top; False when there is none."""
        if query != self.query_text:
            self.query_text = query
            self._cache.clear()
            self.refresh()
        if not query or not self.document.lines:
            return False
        current = self.document.locate(min(int(self.scroll_y), max(self.document.rows - 1, 0)))[0]
        found = search(self.document, query, current - 1 if from_current else current, backwards=backwards)
        if found is None:
            return False
        self.scroll_to(y=self.document.first_row(found), animate=False, immediate=True)
        return True

    def visible_text(self) -> list[str]:
        """The rows on screen as plain text (what a reader sees, for tests and the benchmark)."""
        top = int(self.scroll_y)
        return [self.document.row(top + y).plain for y in range(self.scrollable_content_region.height)]
