"""A pipeline's `inputs:`: what a run is given on the command line (`lg run --input NAME=VALUE`), checked
against the declared type before anything runs, and seen by templates as `inputs.NAME`.

Values come from a command line, so they arrive as text; each is read as its declared type here, once. A
run records the values it was bound with, and `lg resume` binds them again (they round-trip through text).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lg.config.schema_check import suggest
from lg.errors import InvalidInput
from lg.model import InputSpec, InputValue

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class InputBool:
    """A boolean input as templates see it: false in `if:` and `{% if %}`, and `true`/`false` (shell's
    spelling, as `vars` gives it) when rendered into a script; Python's `True` would print as "True"."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value

    def __bool__(self) -> bool:
        return self.value

    def __str__(self) -> str:
        return "true" if self.value else "false"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        if isinstance(other, InputBool):
            return self.value == other.value
        if isinstance(other, bool):
            return self.value is other
        if isinstance(other, str):
            return other == str(self)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.value)


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """`("a=1", "b=x=y")` -> `{"a": "1", "b": "x=y"}`; a pair without `=`, or a name given twice, is an error."""
    values: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        name = name.strip()
        if not equals or not name:
            raise InvalidInput(f"--input {pair!r}: expected NAME=VALUE")
        if name in values:
            raise InvalidInput(f"--input {name}: given twice ({values[name]!r} and {value!r})")
        values[name] = value
    return values


def bind(specs: Sequence[InputSpec], given: Mapping[str, str] | None) -> dict[str, InputValue]:
    """The value of every declared input: given, else its default. `given=None` binds for checking only
    (`lg validate`): a required input then stands as a placeholder of its type, so templates are checked."""
    known = {spec.name: spec for spec in specs}
    for name in given or {}:
        if name not in known:
            declared = ", ".join(known) or "none"
            raise InvalidInput(f"--input {name}: the pipeline declares no input {name!r}{suggest(name, known)} "
                               f"(its inputs: {declared})")
    values: dict[str, InputValue] = {}
    missing = []
    for spec in specs:
        if given is not None and spec.name in given:
            values[spec.name] = read_value(spec, given[spec.name])
        elif spec.default is not None:
            values[spec.name] = spec.default
        elif given is None:
            values[spec.name] = _placeholder(spec)
        else:
            missing.append(spec)
    if missing:
        names = " ".join(f"--input {spec.name}=<{accepted(spec)}>" for spec in missing)
        where = ", ".join(f"{spec.name} at {_where(spec)}" for spec in missing)
        raise InvalidInput(f"required input(s) not given (declared without a default: {where}); add {names}")
    return values


def read_value(spec: InputSpec, text: str) -> InputValue:
    """`text` read as the input's type; an error names the input, what it got and what it accepts."""
    value = _convert(spec, text.strip() if spec.type != "string" else text)
    if value is None:
        raise InvalidInput(f"--input {spec.name}={text}: {spec.name} accepts {accepted(spec)} "
                           f"(declared at {_where(spec)})")
    return value


def check_default(spec_type: str, raw: Any, options: Sequence[str]) -> str | None:
    """Why a declared default does not fit its type, or None (checked when the pipeline loads)."""
    probe = InputSpec("default", spec_type, None, "", tuple(options))  # type: ignore[arg-type]
    if isinstance(raw, bool) and spec_type != "boolean":
        return f"the default {str(raw).lower()} is a boolean, but the input is a {spec_type}"
    if _convert(probe, text_of(raw)) is None:
        return f"the default {text_of(raw)!r} does not fit: the input accepts {accepted(probe)}"
    return None


def typed_default(spec_type: str, raw: Any, options: Sequence[str]) -> InputValue:
    probe = InputSpec("default", spec_type, None, "", tuple(options))  # type: ignore[arg-type]
    value = _convert(probe, text_of(raw))
    assert value is not None  # noqa: S101 - check_default refused it before
    return value


def accepted(spec: InputSpec) -> str:
    """What an input accepts, in words."""
    if spec.type == "number":
        return "a number"
    if spec.type == "boolean":
        return "true or false"
    if spec.type == "choice":
        return "one of " + ", ".join(spec.options)
    return "any text"


def template_values(values: Mapping[str, InputValue]) -> dict[str, Any]:
    """The values as templates see them (booleans render as true/false)."""
    return {name: InputBool(value) if isinstance(value, bool) else value for name, value in values.items()}


def text_of(value: Any) -> str:
    """A value as it is written on a command line (and recorded runs are bound again from)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _convert(spec: InputSpec, text: str) -> InputValue | None:
    if spec.type == "string":
        return text
    if spec.type == "choice":
        return text if text in spec.options else None
    if spec.type == "boolean":
        lowered = text.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else None
    return _number(text)


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # 'nan' and 'inf' parse, but are no one's input


def _placeholder(spec: InputSpec) -> InputValue:
    if spec.type == "number":
        return 0
    if spec.type == "boolean":
        return False
    if spec.type == "choice":
        return spec.options[0] if spec.options else ""
    return f"<{spec.name}>"


def _where(spec: InputSpec) -> str:
    location = spec.location
    return f"{location.path}:{location.line}" if location.line is not None else str(location.path)

