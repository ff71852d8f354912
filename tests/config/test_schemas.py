"""The committed JSON Schemas are generated from lg's own definitions and must never drift from them."""

from __future__ import annotations

import json

import jsonschema
import pytest

from lg.inputs.schemas import build_schema, schema_filename, schema_names, schema_text
from tests.conftest import REPO


@pytest.mark.parametrize("name", schema_names())
def test_committed_schema_is_fresh(name: str) -> None:
    committed = REPO / "schemas" / schema_filename(name)
    assert committed.is_file(), f"{committed} is missing: run scripts/gen-schemas"
    assert committed.read_text() == schema_text(name), f"{committed} is stale: run scripts/gen-schemas"


@pytest.mark.parametrize("name", schema_names())
def test_schema_is_itself_valid(name: str) -> None:
    schema = build_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"].endswith(schema_filename(name)) and schema["title"]


def test_examples_point_editors_at_the_schema() -> None:
    for pipeline in sorted((REPO / "pipelines").glob("*/pipeline.yaml")):
        first_line = pipeline.read_text().splitlines()[0]
        assert first_line == "# yaml-language-server: $schema=../../schemas/pipeline.schema.json", pipeline


def test_schema_command_prints_valid_json(lg) -> None:  # type: ignore[no-untyped-def]
    result = lg("schema", "pipeline")
    assert result.code == 0
    assert json.loads(result.out)["title"] == "LuminaGuard pipeline"
    assert lg("schema", "nope").code == 2
