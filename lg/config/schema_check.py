"""Validate a loaded document against a JSON Schema and report every problem at its file, line and key."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lg.config import verdicts
from lg.config.yamlsource import KeyPath, SourceDoc
from lg.errors import InvalidInput

MESSAGE = "x-lg-message"
"""A schema keyword of lg's own: what a `pattern` means, in words, for the error reported when a value does not
match it (JSON Schema validators ignore keywords they do not know; `x-` marks it as an extension)."""

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError


def suggest(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'build'?)` when a close match exists, else the empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_schema(doc: SourceDoc, schema: Mapping[str, Any]) -> list[InvalidInput]:
    """Every schema violation in `doc`, in file order. An empty list means the document is valid.

    A document found valid once, with this content, schema and jsonschema, is not validated again
    (lg.config.verdicts): importing jsonschema alone cost every `lg run` and `lg validate` about 0.1 s."""
    subject, checker = _canonical(doc.data), _checker(schema)
    if subject is not None and checker is not None and verdicts.passed("schema", subject, checker):
        return []
    import jsonschema  # noqa: PLC0415 - only when something is validated

    validator = jsonschema.Draft202012Validator(schema)
    errors = [_to_input_error(doc, error) for error in _leaf_errors(validator.iter_errors(doc.data))]
    unique = {str(error): error for error in errors}
    if not unique and subject is not None and checker is not None:
        verdicts.remember("schema", subject, checker)
    return sorted(unique.values(), key=_file_order)


def _canonical(value: Any) -> bytes | None:
    """The document as canonical JSON, or None when it holds anything JSON cannot say exactly (then it is
    always validated): a key that is not a string (JSON would turn `1:` into "1"), NaN, a date."""
    if not _plain_json(value):
        return None
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError):
        return None


def _plain_json(value: Any) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if not all(isinstance(key, str) for key in item):
                return False
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif item is not None and not isinstance(item, str | int | float):  # bool is an int
            return False
    return True


def _checker(schema: Mapping[str, Any]) -> str | None:
    text = _canonical(schema)
    return None if text is None else f"{_jsonschema_identity()}\0{text.decode()}"


@functools.cache
def _jsonschema_identity() -> str:
    """The installed jsonschema, found without importing it (its metadata lookup alone cost 70 ms)."""
    spec = importlib.util.find_spec("jsonschema")
    return verdicts.file_identity(spec.origin) if spec is not None and spec.origin else "unknown"


def _file_order(error: InvalidInput) -> tuple[int, int]:
    location = error.location
    if location is None:
        return (0, 0)
    return (location.line or 0, location.column or 0)


def _leaf_errors(errors: Iterable[ValidationError]) -> Iterable[ValidationError]:
    """For `oneOf`/`anyOf` failures, report the alternative that got furthest, not a wall of text."""
    for error in errors:
        best = _best_alternative(error) if error.validator in ("oneOf", "anyOf") and error.context else error
        if best is error:
            yield error
        else:
            yield from _leaf_errors([best])


def _best_alternative(error: ValidationError) -> ValidationError:
    # The deepest sub-error is the one whose shape matched best (its type was right, a detail was wrong).
    # A type mismatch at the top is least informative, so it ranks last.
    def rank(sub: ValidationError) -> tuple[int, int]:
        return (len(sub.absolute_path), 0 if sub.validator == "type" else 1)

    best = max(error.context or [], key=rank)
    if best.validator == "type" and not best.relative_path:
        return error  # no alternative's type matched: the generic message is the honest one
    return best


def _to_input_error(doc: SourceDoc, error: ValidationError) -> InvalidInput:
    key_path: KeyPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(schema.get("properties", {}))
        extras = [key for key in error.instance if key not in allowed]
        if extras:
            key = extras[0]
            return doc.error((*key_path, key), f"unknown key {key!r}{suggest(key, allowed)}", at_key=True)
    if error.validator == "enum" and isinstance(error.validator_value, list):
        choices = ", ".join(repr(choice) for choice in error.validator_value)
        hint = suggest(str(error.instance), [str(c) for c in error.validator_value])
        return doc.error(key_path, f"{error.instance!r} is not one of {choices}{hint}")
    if error.validator == "type":
        expected = error.validator_value
        expected_text = " or ".join(expected) if isinstance(expected, list) else expected
        return doc.error(key_path, f"expected {expected_text}, got {_describe(error.instance)}")
    if error.validator == "required":
        return doc.error(key_path, error.message.replace("is a required property", "is required"))
    if error.validator == "pattern" and isinstance(schema.get(MESSAGE), str):
        return doc.error(key_path, f"{_describe(error.instance)}: {schema[MESSAGE]}")
    if error.validator in {"oneOf", "anyOf"}:
        return doc.error(key_path, f"{_describe(error.instance)} is not any of the accepted forms")
    return doc.error(key_path, error.message)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    return f"{type(value).__name__} {value!r}"
