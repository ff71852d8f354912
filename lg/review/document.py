"""A gate's card as lines of styled text, folded to a width on demand: what the reviewer scrolls through.

A card can hold thousands of diff lines, so nothing here renders the whole card: `fold` only counts how many
screen rows each line takes at the width (arithmetic on ASCII lines, a walk over the characters otherwise), and
`row` cuts out the one screen row asked for. Long lines are folded, never cut: continuation rows are indented
under the line's own indentation and marked with `↪`, as `lg show` does.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from rich.cells import get_character_cell_size
from rich.text import Text

CONTINUATION = "↪ "


@dataclass
class Line:
    text: Text
    section: str = ""  # what part of the card it belongs to (header, rules, command, diff...), for tests and search
    indent: int = 0  # where continuation rows start, under the line's own text


@dataclass
class Folded:
    """Where each line's screen rows start at one width."""

    width: int
    starts: list[int]  # starts[i]: the first screen row of line i; starts[-1]: the total
    cuts: dict[int, list[int]] = field(default_factory=dict)  # per non-ASCII line: char offsets of its rows


class CardDocument:
    def __init__(self, lines: list[Line]) -> None:
        self.lines = lines
        self._folded: Folded | None = None

    @property
    def plain(self) -> list[str]:
        return [line.text.plain for line in self.lines]

    def fold(self, width: int) -> int:
        """Fold to `width` cells; returns the number of screen rows."""
        width = max(width, 8)
        if self._folded is not None and self._folded.width == width:
            return self._folded.starts[-1]
        starts = [0]
        cuts: dict[int, list[int]] = {}
        total = 0
        for index, line in enumerate(self.lines):
            plain = line.text.plain
            rest = width - _prefix_width(line.indent, width)
            if plain.isascii():
                size = len(plain)
                total += 1 if size <= width else 1 + -(-(size - width) // rest)
            else:
                cuts[index] = _cuts(plain, width, rest)
                total += len(cuts[index])
            starts.append(total)
        self._folded = Folded(width, starts, cuts)
        return total

    @property
    def rows(self) -> int:
        return self._folded.starts[-1] if self._folded else len(self.lines)

    def locate(self, row: int) -> tuple[int, int]:
        """(line index, row within that line) of a screen row."""
        assert self._folded is not None, "fold() first"  # noqa: S101 - a programming error
        index = bisect.bisect_right(self._folded.starts, row) - 1
        return index, row - self._folded.starts[index]

    def first_row(self, index: int) -> int:
        assert self._folded is not None, "fold() first"  # noqa: S101
        return self._folded.starts[index]

    def row(self, row: int) -> Text:
        """Screen row `row` as styled text (at most the folded width in cells)."""
        folded = self._folded
        assert folded is not None, "fold() first"  # noqa: S101
        if row < 0 or row >= folded.starts[-1]:
            return Text("")
        index, part = self.locate(row)
        line = self.lines[index]
        cuts = folded.cuts.get(index)
        if cuts is None:
            rest = folded.width - _prefix_width(line.indent, folded.width)
            begin = 0 if part == 0 else folded.width + (part - 1) * rest
            end = folded.width if part == 0 else begin + rest
        else:
            begin = cuts[part]
            end = cuts[part + 1] if part + 1 < len(cuts) else len(line.text)
        piece = line.text[begin:end]
        if part == 0:
            return piece
        prefix = " " * (_prefix_width(line.indent, folded.width) - len(CONTINUATION)) + CONTINUATION
        return Text.assemble(Text(prefix, style="dim"), piece)


def _prefix_width(indent: int, width: int) -> int:
    return min(indent + len(CONTINUATION), width // 2)


def _cuts(plain: str, width: int, rest: int) -> list[int]:
    """Char offsets where each screen row of a line with wide or combining characters starts."""
    cuts, room = [0], width
    for offset, char in enumerate(plain):
        size = get_character_cell_size(char)
        if size > room and offset > cuts[-1]:
            cuts.append(offset)
            room = rest
        room -= size
    return cuts


def search(document: CardDocument, query: str, after: int, *, backwards: bool = False) -> int | None:
    """The index of the next line (cyclically, after line `after`) that contains `query`, case-insensitive."""
    needle = query.lower()
    count = len(document.lines)
    if not needle or count == 0:
        return None
    for step in range(1, count + 1):
        index = (after - step if backwards else after + step) % count
        if needle in document.lines[index].text.plain.lower():
            return index
    return None

