"""Folding a card's lines to a width: every character kept, in order, no row wider than the width, wide
characters never split, and the row arithmetic of ASCII lines equal to the character walk."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.text import Text

from lg.review.document import CONTINUATION, CardDocument, Line, search


def unfolded(document: CardDocument) -> list[str]:
    """The lines put back together from their screen rows."""
    lines: list[str] = []
    for row in range(document.rows):
        index, part = document.locate(row)
        text = document.row(row).plain
        if part == 0:
            lines.append(text)
        else:
            lines[index] += text.split(CONTINUATION, 1)[1]
    return lines


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet=st.sampled_from("ab c-漢字🔴é\u0301"), max_size=300),
                          st.integers(0, 12)), max_size=12), st.integers(8, 140))
def test_folded_lines_keep_every_character_and_fit(lines: list[tuple[str, int]], width: int) -> None:
    document = CardDocument([Line(Text(text), indent=indent) for text, indent in lines])
    document.fold(width)
    assert unfolded(document) == [text for text, _ in lines]
    assert all(cell_len(document.row(row).plain) <= width for row in range(document.rows))


def test_ascii_rows_are_counted_without_walking() -> None:
    document = CardDocument([Line(Text("x" * 250), indent=4), Line(Text("short"))])
    assert document.fold(100) == 3 + 1  # 100, then 94 + 56 after a 6-cell "    ↪ " prefix
    assert document.row(1).plain == "    ↪ " + "x" * 94
    assert document.fold(80) == 4 + 1


def test_search_wraps_around_and_goes_backwards() -> None:
    document = CardDocument([Line(Text(t)) for t in ("alpha", "beta", "ALPHA two", "gamma")])
    assert search(document, "alpha", 0) == 2
    assert search(document, "alpha", 2) == 0
    assert search(document, "alpha", 0, backwards=True) == 2
    assert search(document, "delta", 0) is None and search(document, "", 0) is None
