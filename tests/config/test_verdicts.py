"""lg.config.verdicts through schema validation: a document valid once is not validated again (jsonschema is
not even imported for it), anything else always is."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from lg.config.schema_check import check_schema
from lg.config.yamlsource import parse_yaml

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False}


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Any]:
    """Every document jsonschema is asked to validate, with the verdict cache in tmp_path."""
    import jsonschema

    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    seen: list[Any] = []
    real = jsonschema.Draft202012Validator

    def counting(schema: Any) -> Any:  # check_schema makes one validator per document it validates
        seen.append(schema)
        return real(schema)

    monkeypatch.setattr(jsonschema, "Draft202012Validator", counting)
    return seen


def test_a_valid_document_is_validated_once_and_an_invalid_one_every_time(validations: list[Any]) -> None:
    for _ in range(2):
        assert check_schema(parse_yaml("name: build\n", Path("a.yaml")), SCHEMA) == []
    assert len(validations) == 1
    for _ in range(2):
        errors = check_schema(parse_yaml("name: build\nnmae: typo\n", Path("b.yaml")), SCHEMA)
        assert "b.yaml" in str(errors[0]) and "nmae" in str(errors[0])
    assert len(validations) == 3
    assert check_schema(parse_yaml("name: build\n", Path("c.yaml")), {**SCHEMA, "required": ["name"]}) == []
    assert len(validations) == 4  # another schema: validated again


def test_what_json_cannot_say_exactly_is_always_validated(validations: list[Any]) -> None:
    for _ in range(2):
        check_schema(parse_yaml("1: build\n", Path("a.yaml")), SCHEMA)  # JSON would make the key "1"
    assert len(validations) == 2


def test_the_cache_is_consulted_before_jsonschema_is_imported(tmp_path: Path) -> None:
    import os
    import subprocess

    code = ("import sys; from pathlib import Path; from lg.config.schema_check import check_schema; "
            "from lg.config.yamlsource import parse_yaml; "
            f"check_schema(parse_yaml('name: x\\n', Path('a.yaml')), {SCHEMA!r}); "
            "print('jsonschema' in sys.modules)")
    env = {**os.environ, "LG_CACHE_DIR": str(tmp_path / "cache")}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=env).stdout.strip() for _ in range(2)]
    assert runs == ["True", "False"]
