"""Workspace globs, as artifacts and hashFiles() take them: `*` and `?` within one path segment, `[abc]`,
and `**` for any number of directories. A pattern that names a directory takes everything below it.

Matched against POSIX paths relative to the workspace; nothing here reads a file system, so the same matcher
serves the host workspace (hashFiles) and the list of the guest's files (artifacts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

GLOB_CHARACTERS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    return any(character in GLOB_CHARACTERS for character in pattern)


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    segments = [segment for segment in pattern.strip("/").split("/") if segment not in ("", ".")]
    regex = ""
    for position, segment in enumerate(segments):
        last = position == len(segments) - 1
        if segment == "**":
            regex += ".*" if last else "(?:.*/)?"
        else:
            regex += _segment(segment) + ("" if last else "/")
    # A match may be a directory above the path: `dist` and `dist/*` both take dist/a/b.whl.
    return re.compile(f"{regex}(?:/.*)?")


def _segment(segment: str) -> str:
    out, index = [], 0
    while index < len(segment):
        character = segment[index]
        if character == "*":
            out.append("[^/]*")
        elif character == "?":
            out.append("[^/]")
        elif character == "[" and (close := segment.find("]", index + 2)) != -1:
            body = segment[index + 1:close]
            negated = body.startswith("!")
            body = re.sub(r"([\\\]^])", r"\\\1", body[1:] if negated else body)
            out.append(f"[{'^' if negated else ''}{body}]")
            index = close
        else:
            out.append(re.escape(character))
        index += 1
    return "".join(out)


def matches(pattern: str, path: str) -> bool:
    return _compiled(pattern).fullmatch(path) is not None


def select(patterns: Iterable[str], paths: Iterable[str]) -> list[str]:
    """The paths any pattern matches, sorted."""
    wanted = list(patterns)
    return sorted(path for path in paths if any(matches(pattern, path) for pattern in wanted))
