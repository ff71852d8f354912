"""Load a user's YAML file into plain data plus the line and column of every key and value.

PyYAML's own loaders are not safe enough for files we treat as policy: they silently keep the last of two
duplicate keys, expand aliases without bound ("billion laughs"), and report no positions once data is built.
So we only let PyYAML *compose* the node graph (cheap: aliases stay shared references) and build the data
ourselves, refusing duplicates, custom tags and runaway expansion, and recording a `Mark` for every path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lg.errors import InvalidInput, Location

MAX_FILE_BYTES = 1024 * 1024
"""Files larger than this are refused before parsing (documented in docs/pipeline.md)."""

MAX_NODES = 100_000
"""Nodes after alias expansion; a legitimate pipeline is far below, an alias bomb far above."""

MAX_DEPTH = 64
"""Mappings and lists nested deeper than this are refused: no file lg reads needs more, and building data of
any depth recursively would crash Python's stack (a 1,000-deep `[[[...]]]` did)."""

KeyPath = tuple[str | int, ...]

_SCALAR_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
}
_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"

try:  # libyaml is much faster; it ships in PyYAML's wheels but may be missing in a source build
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


def format_key_path(key_path: KeyPath) -> str:
    """`("steps", 2, "needs")` -> `steps[2].needs`."""
    text = ""
    for part in key_path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class SourceDoc:
    """A loaded YAML document: its data, and where each value and each mapping key stands in the file."""

    path: Path
    data: Any
    value_marks: Mapping[KeyPath, Mark] = field(default_factory=dict)
    key_marks: Mapping[KeyPath, Mark] = field(default_factory=dict)

    def location(self, key_path: KeyPath, *, at_key: bool = False) -> Location:
        """The location of `key_path`, or of its nearest ancestor that has one."""
        marks = (self.key_marks, self.value_marks) if at_key else (self.value_marks, self.key_marks)
        probe = tuple(key_path)
        while True:
            for table in marks:
                mark = table.get(probe)
                if mark is not None:
                    return Location(self.path, mark.line, mark.column, format_key_path(key_path))
            if not probe:
                return Location(self.path, None, None, format_key_path(key_path))
            probe = probe[:-1]

    def error(self, key_path: KeyPath, message: str, *, at_key: bool = False) -> InvalidInput:
        return InvalidInput(message, self.location(key_path, at_key=at_key))


def _mark(node: yaml.Node) -> Mark:
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        # A block scalar's text starts on the line after its indicator; template line 1 is that line.
        return Mark(node.start_mark.line + 2, 1)
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns a composed node graph into plain data, refusing what a policy file must never contain."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value_marks: dict[KeyPath, Mark] = {}
        self.key_marks: dict[KeyPath, Mark] = {}
        self.nodes_built = 0
        self._scalar_constructor = yaml.SafeLoader("")
        self._building: set[int] = set()  # the nodes being built, to catch an alias that contains itself

    def fail(self, node: yaml.Node, message: str, key_path: KeyPath) -> InvalidInput:
        mark = _mark(node)
        return InvalidInput(message, Location(self.path, mark.line, mark.column, format_key_path(key_path)))

    def build(self, node: yaml.Node, key_path: KeyPath = ()) -> Any:
        self.nodes_built += 1
        if self.nodes_built > MAX_NODES:
            raise self.fail(
                node,
                f"document expands to more than {MAX_NODES} nodes (an alias bomb?); refusing it",
                key_path,
            )
        self.value_marks.setdefault(key_path, _mark(node))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, key_path)
        if len(key_path) >= MAX_DEPTH:
            raise self.fail(node, f"nested deeper than {MAX_DEPTH} levels; refusing it", key_path)
        if id(node) in self._building:
            raise self.fail(node, "an alias refers to a value that contains it (a recursive alias)", key_path)
        self._building.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, key_path)
            if node.tag != _SEQ_TAG:
                raise self.fail(node, f"tag {node.tag!r} is not allowed here", key_path)
            return [self.build(item, (*key_path, index)) for index, item in enumerate(node.value)]
        finally:
            self._building.discard(id(node))

    def _scalar(self, node: yaml.Node, key_path: KeyPath) -> Any:
        if node.tag == _STR_TAG:
            return node.value
        if node.tag == _TIMESTAMP_TAG:
            return node.value  # dates stay text: no schema here wants a datetime object
        if node.tag in _SCALAR_TAGS:
            try:
                return self._scalar_constructor.construct_object(node)
            except (ValueError, LookupError, TypeError, yaml.YAMLError):  # `!!int x`, `!!float abc`, `!!bool maybe`
                kind = node.tag.rsplit(":", 1)[-1]
                raise self.fail(node, f"{node.value!r} is not a valid {kind} (it is tagged !!{kind})",
                                key_path) from None
        raise self.fail(node, f"tag {node.tag!r} is not allowed (only plain YAML data is)", key_path)

    def _mapping(self, node: yaml.MappingNode, key_path: KeyPath) -> dict[str, Any]:
        if node.tag != _MAP_TAG:
            raise self.fail(node, f"tag {node.tag!r} is not allowed here", key_path)
        result: dict[str, Any] = {}
        explicit: set[str] = set()
        merged: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge_sources(value_node, key_path))
                continue
            key = self._key(key_node, key_path)
            if key in explicit:
                raise self.fail(key_node, f"duplicate key {key!r} (YAML would silently keep the last one)",
                                (*key_path, key))
            explicit.add(key)
            self.key_marks[(*key_path, key)] = _mark(key_node)
            result[key] = self.build(value_node, (*key_path, key))
        return {**{k: v for k, v in merged.items() if k not in explicit}, **result}

    def _merge_sources(self, node: yaml.Node, key_path: KeyPath) -> dict[str, Any]:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict[str, Any] = {}
        for source in reversed(sources):  # earlier sources win, as in YAML's merge-key spec
            value = self.build(source, key_path)
            if not isinstance(value, dict):
                raise self.fail(source, "'<<' merges only mappings", key_path)
            merged.update(value)
        return merged

    def _key(self, node: yaml.Node, key_path: KeyPath) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, "mapping keys must be plain strings", key_path)
        value = self._scalar(node, key_path)
        if isinstance(value, bool) or value is None:
            # `on:`/`yes:` are booleans in YAML 1.1; as a key that is always a surprise, so say so.
            raise self.fail(node, f"key {node.value!r} is read as {value!r}; quote it", key_path)
        return str(value)


def _read_text(path: Path) -> str:
    if not path.exists():
        raise InvalidInput("file not found", Location(path))
    if path.is_dir():
        raise InvalidInput("is a directory, not a file", Location(path))
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidInput(f"file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes", Location(path))
        raw = path.read_bytes()
    except OSError as error:
        raise InvalidInput(f"cannot read: {error.strerror}", Location(path)) from error
    return decode_text(raw, path)


def decode_text(raw: bytes, path: Path) -> str:
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(f"file is {len(raw)} bytes; the limit is {MAX_FILE_BYTES} bytes", Location(path))
    if b"\x00" in raw:
        raise InvalidInput("binary file (contains NUL bytes), not YAML", Location(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise InvalidInput("not valid UTF-8 text", Location(path, line, column)) from error


def load_yaml(path: Path) -> SourceDoc:
    """Read and parse one YAML file. Raises `InvalidInput` (with file:line) for every user mistake."""
    return parse_yaml(_read_text(path), path)


def parse_yaml(text: str, path: Path) -> SourceDoc:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise InvalidInput(f"document is larger than {MAX_FILE_BYTES} bytes", Location(path))
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as error:
        raise _syntax_error(error, path) from error
    except yaml.YAMLError as error:  # e.g. a reader error on a control character
        raise InvalidInput(f"invalid YAML: {error}", Location(path)) from error
    if node is None:
        raise InvalidInput("file is empty", Location(path))
    builder = _Builder(path)
    data = builder.build(node)
    return SourceDoc(path, data, builder.value_marks, builder.key_marks)


_OPENED_HERE = ("scanning a quoted scalar", "scanning a block scalar", "parsing a flow", "scanning a simple key",
                "scanning an anchor", "scanning an alias", "scanning a tag", "scanning a directive")
"""PyYAML contexts that name a construct opened at the context mark and never closed properly: the mistake
starts there (an unclosed quote is reported at the end of the file otherwise). Other contexts ("while parsing
a block mapping") mark only where the enclosing mapping began; there the problem mark is the place to look."""


def _syntax_error(error: yaml.MarkedYAMLError, path: Path) -> InvalidInput:
    """A syntax error at the line and column where the problem starts, with where PyYAML noticed it when that
    is somewhere else (the end of an unclosed quote or bracket)."""
    start, end = error.context_mark, error.problem_mark
    context = (error.context or "").removeprefix("while ").strip()
    problem = error.problem or context or "invalid YAML"
    if start is not None and end is not None and context.startswith(_OPENED_HERE) and _before(start, end):
        message = f"invalid YAML: {_article(context)} that starts here is not closed: {problem} " \
                  f"(at line {end.line + 1}, column {end.column + 1})"
        return InvalidInput(message, Location(path, start.line + 1, start.column + 1))
    mark = end if end is not None else start
    if mark is None:
        return InvalidInput(f"invalid YAML: {problem}", Location(path))
    if context and start is not None and end is not None and _before(start, end):
        problem += f" ({context} started at line {start.line + 1}, column {start.column + 1})"
    return InvalidInput(f"invalid YAML: {problem}", Location(path, mark.line + 1, mark.column + 1))


def _before(start: yaml.Mark, end: yaml.Mark) -> bool:
    return (start.line, start.column) < (end.line, end.column)


def _article(context: str) -> str:
    """`scanning a quoted scalar` -> `a quoted scalar` (what the reader opened, not what the parser was doing)."""
    for verb in ("scanning ", "parsing "):
        if context.startswith(verb):
            return context.removeprefix(verb)
    return context
