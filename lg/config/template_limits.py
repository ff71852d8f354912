"""Bounds on what one template operation may make, so that rendering a pipeline cannot exhaust memory.

Jinja's sandbox bounds `range()` (100,000 items) but not repetition: `{{ 'a' * 10000000000 }}` made `lg validate`
grow past 8 GB. Every operation that can make its result much larger than its operands is checked here before
it runs: repetition (`*`), powers (`**`), printf-style and str.format widths, padding and indentation, replace,
join, and any whole-number argument of a call or filter (batch, slice, lipsum, ljust...). What would be larger
than MAX_ITEMS characters or items is refused with a message saying so; the template problem then names the
file and line like any other.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

MAX_ITEMS = 1_000_000
"""The most characters, list items or whole-number size one template operation may make or ask for."""

MAX_POWER_BITS = 65536
"""`**` on whole numbers: results wider than this many bits are refused (10 ** 10 ** 9 would run for hours)."""

_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_GROWING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join", "format",
                              "format_map"})


class TooLarge(ValueError):
    """A template operation would make more than MAX_ITEMS (a ValueError, so templates report it as failed)."""


def check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        _check_repetition(left, right)
        _check_repetition(right, left)
    elif operator == "**":
        _check_power(left, right)
    elif operator == "%" and isinstance(left, str):
        check_printf(left)


def check_call(target: Any, args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    """Before a call from a template: whole-number arguments, and the result size of str's growing methods."""
    values = [*args, *kwargs.values()]
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ITEMS:
            raise TooLarge(f"{value} is larger than a template may ask for (at most {MAX_ITEMS:,})")
    method = getattr(target, "__wrapped__", target)  # the sandbox wraps str.format in a function of its own
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
    if isinstance(owner, str) and name in _GROWING_METHODS:
        check_str_method(owner, name, values)


def check_str_method(text: str, name: str, args: list[Any]) -> None:
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check_size(_replaced_size(text, args[0], args[1]), "replace")
    elif name == "join":
        _check_size(_joined_size(text, args[0] if args else ()), "join")
    elif name == "expandtabs":
        width = args[0] if args and isinstance(args[0], int) else 8
        _check_size(len(text) + text.count("\t") * max(width, 0), "expandtabs")
    elif name in ("format", "format_map"):
        check_format(text)


def check_printf(template: str) -> None:
    for match in _PRINTF_SPEC.finditer(template):
        for number in match.groups():
            if number and number != "*" and int(number) > MAX_ITEMS:
                raise TooLarge(f"a width of {int(number):,} in {match.group(0)!r} is larger than a template may "
                               f"make (at most {MAX_ITEMS:,} characters)")


def check_format(template: str) -> None:
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return  # str.format will say what is wrong with it
    for _, _, spec, _ in fields:
        for number in re.findall(r"\d+", spec or ""):
            if int(number) > MAX_ITEMS:
                raise TooLarge(f"a width of {int(number):,} in a format field is larger than a template may make "
                               f"(at most {MAX_ITEMS:,} characters)")


def guarded_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """The environment's filters, each checked like a call first, and the growing ones for their result size."""
    return {name: _guard_filter(name, function) for name, function in filters.items()}


def _guard_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check_call(function, args, kwargs)
        values = [value for value in args if not _is_jinja_state(value)]
        _check_filter_size(name, values)
        return function(*args, **kwargs)

    # Jinja passes the environment, context or eval context to filters marked for it, by this attribute.
    guarded.jinja_pass_arg = getattr(function, "jinja_pass_arg", None)  # type: ignore[attr-defined]
    guarded.__name__ = getattr(function, "__name__", name)
    return guarded


def _check_filter_size(name: str, values: list[Any]) -> None:
    if name == "replace" and len(values) >= 3 and all(isinstance(v, str) for v in values[:3]):
        _check_size(_replaced_size(values[0], values[1], values[2]), "replace")
    elif name == "join" and values:
        separator = values[1] if len(values) > 1 and isinstance(values[1], str) else ""
        _check_size(_joined_size(separator, values[0]), "join")
    elif name == "indent" and values and isinstance(values[0], str):
        width = values[1] if len(values) > 1 and isinstance(values[1], int) else 4
        _check_size(len(values[0]) + (values[0].count("\n") + 1) * max(width, 0), "indent")
    elif name == "format" and values and isinstance(values[0], str):
        check_printf(values[0])


def _is_jinja_state(value: Any) -> bool:
    return type(value).__module__.startswith("jinja2.")


def _check_repetition(sequence: Any, times: Any) -> None:
    if isinstance(sequence, str | list | tuple | bytes) and isinstance(times, int) and not isinstance(times, bool):
        _check_size(len(sequence) * times, "repetition")


def _check_power(base: Any, exponent: Any) -> None:
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (base, exponent)):
        return
    if exponent > 0 and abs(base) > 1 and exponent * abs(base).bit_length() > MAX_POWER_BITS:
        raise TooLarge(f"{base} ** {exponent} is larger than a template may make (at most {MAX_POWER_BITS} bits)")


def _replaced_size(text: str, old: str, new: str) -> int:
    count = text.count(old) if old else len(text) + 1
    return len(text) + count * (len(new) - len(old))


def _joined_size(separator: str, items: Any) -> int:
    if not isinstance(items, list | tuple):
        return 0  # an iterator: its items are made one by one and were bounded where they were made
    return sum(len(item) if isinstance(item, str) else 1 for item in items) + len(separator) * len(items)


def _check_size(size: int, what: str) -> None:
    if size > MAX_ITEMS:
        raise TooLarge(f"{what} would make {size:,} characters or items; a template may make at most {MAX_ITEMS:,}")
