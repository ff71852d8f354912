"""How an `mcp` rule matches a call to an MCP tool: the server's name, the tool's name, and its arguments.

    mcp:
      server: github                 # globs on the server's name as the pipeline names it (default: any)
      tool: "delete_*"               # globs on the tool's name
      arguments:                     # every condition must hold
        - {path: /repo, glob: "prod-*"}
        - {path: /**/url, regex: "^http://"}
        - {path: /force}             # no glob or regex: the value is there

A path is a JSON pointer (RFC 6901: /a/b, ~1 for '/', ~0 for '~') where a segment `*` is any one key or index,
and `**` any number of them. A condition holds when some scalar at or under a node the path reaches matches:
strings as they are, numbers, booleans and null as JSON text (42, true, null).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_ARGUMENT_BYTES = 1_000_000  # a tool call's arguments as JSON: more is not reviewable, and is graded red
MAX_ARGUMENT_DEPTH = 64  # nesting; deeper is graded red (and would exhaust a recursive reader)


@dataclass(frozen=True)
class McpCall:
    """A call as examples, golden files and `lg policy explain --mcp` give it."""

    server: str
    tool: str
    arguments: Any  # a JSON object when well formed; anything else is graded red
    annotations: Mapping[str, Any] = field(default_factory=dict)  # the tool's hints, as its server sent them


@dataclass(frozen=True)
class ArgumentCondition:
    pointer: tuple[str, ...] = ()  # the path's segments, unescaped; () is the whole arguments object
    glob: str | None = None
    regex: re.Pattern[str] | None = None

    def holds(self, arguments: Mapping[str, Any]) -> str | None:
        """Where it holds, as `/path = value`, or None."""
        for where, node in _reach(arguments, self.pointer, ""):
            if self.glob is None and self.regex is None:
                return f"{where or '/'} is present"
            for leaf_path, value in _scalars(node, where):
                text = value if isinstance(value, str) else json.dumps(value)
                if self._value_hits(text):
                    return f"{leaf_path or '/'} = {_shown(text)}"
        return None

    def _value_hits(self, text: str) -> bool:
        if self.glob is not None and not fnmatch.fnmatchcase(text, self.glob):
            return False
        return self.regex is None or bool(self.regex.search(text))


@dataclass(frozen=True)
class McpMatch:
    tools: tuple[str, ...]  # globs on the tool's name
    servers: tuple[str, ...] = ()  # globs on the server's name; empty: any server
    arguments: tuple[ArgumentCondition, ...] = ()

    def matches(self, server: str, tool: str, arguments: Mapping[str, Any]) -> str | None:
        """What the rule found (`server/tool`, and where the arguments matched), or None. The arguments must
        have passed `argument_problem` (the grader checks them first)."""
        if self.servers and not _globs(self.servers).match(server):
            return None
        if not _globs(self.tools).match(tool):
            return None
        found = [hit for condition in self.arguments if (hit := condition.holds(arguments)) is not None]
        if len(found) != len(self.arguments):
            return None
        return "; ".join([f"{server}/{tool}", *found])


def parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901: '' is the whole document, '/a/b~1c' is ('a', 'b/c'). Raises ValueError on anything else."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError(f"a JSON pointer starts with '/' (e.g. /{text})")
    segments = text[1:].split("/")
    if any(re.search(r"~(?![01])", segment) for segment in segments):
        raise ValueError("'~' in a JSON pointer is written ~0, and '/' inside a key ~1")
    return tuple(segment.replace("~1", "/").replace("~0", "~") for segment in segments)


def argument_problem(arguments: Any) -> str | None:
    """Why these arguments cannot be graded as a tool call's (not a JSON object, too big, too deep), or None."""
    if not isinstance(arguments, Mapping):
        return f"the arguments are not a JSON object but {type(arguments).__name__}"
    problem = _not_json(arguments)
    if problem is not None:
        return problem
    size = len(json.dumps(arguments, ensure_ascii=False).encode())
    if size > MAX_ARGUMENT_BYTES:
        return f"the arguments are {size} bytes of JSON, more than the {MAX_ARGUMENT_BYTES} a reviewer can check"
    return None


# --- internals -------------------------------------------------------------------------------------------


def _not_json(arguments: Mapping[str, Any]) -> str | None:
    """Iteratively, so no nesting can exhaust the stack: only JSON's types, string keys, finite numbers."""
    pending: list[tuple[Any, str, int]] = [(arguments, "", 0)]
    while pending:
        node, where, depth = pending.pop()
        if depth > MAX_ARGUMENT_DEPTH:
            return f"the arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels (at {where})"
        if isinstance(node, Mapping):
            for key, value in node.items():
                if not isinstance(key, str):
                    return f"the arguments have a key that is not a string at {where or '/'}: {key!r}"
                pending.append((value, f"{where}/{_escaped(key)}", depth + 1))
        elif isinstance(node, list | tuple):
            pending.extend((value, f"{where}/{index}", depth + 1) for index, value in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            return f"the arguments hold a number JSON cannot carry at {where or '/'}: {node!r}"
        elif not (node is None or isinstance(node, str | int | float | bool)):
            return f"the arguments hold a Python {type(node).__name__} at {where or '/'}, not a JSON value"
    return None


def _reach(node: Any, pointer: Sequence[str], where: str) -> Iterator[tuple[str, Any]]:
    """The nodes `pointer` reaches from `node`, with their paths (`*` one step anywhere, `**` any number)."""
    if not pointer:
        yield where, node
        return
    head, rest = pointer[0], pointer[1:]
    if head == "**":
        yield from _reach(node, rest, where)
        for step, child in _children(node):
            yield from _reach(child, pointer, f"{where}/{_escaped(step)}")
        return
    for step, child in _children(node):
        if head in ("*", step):
            yield from _reach(child, rest, f"{where}/{_escaped(step)}")


def _children(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        yield from ((str(key), value) for key, value in node.items())
    elif isinstance(node, list | tuple):
        yield from ((str(index), value) for index, value in enumerate(node))


def _scalars(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping | list | tuple):
        for step, child in _children(node):
            yield from _scalars(child, f"{where}/{_escaped(step)}")
    else:
        yield where, node


def _escaped(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _shown(text: str) -> str:
    """A matched value for the card: whole when short, else its start (the card shows the call in full)."""
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted if len(quoted) <= 200 else f"{quoted[:200]}... ({len(text)} characters)"


@functools.lru_cache(maxsize=1024)
def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns) or "(?!)")
