"""Property: whatever bytes a user feeds in, loading ends in a valid model or an `lg` user error."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lg.config.pipeline import build_pipeline
from lg.config.project import load_project_config
from lg.config.yamlsource import parse_yaml
from lg.errors import InvalidInput
from lg.model import Pipeline

CONFIG = load_project_config(Path(tempfile.gettempdir()))
PATH = Path("fuzz.yaml")

KEYS = ["id", "name", "run", "uses", "needs", "if", "env", "workdir", "timeout", "retries",
        "continue_on_error", "outputs", "artifacts", "matrix", "profile", "hypervisor", "approve", "bogus"]
TEXT = st.sampled_from(["a", "b", "build", "{{ vars.x }}", "{{ steps.a.outputs.v }}", "{{", "1h", "-1",
                        "x y", "", "../up", "{{ matrix.v }}", "echo hi", "vars.x == 'y'"])
SCALARS = st.one_of(TEXT, st.integers(-3, 5), st.booleans(), st.none(), st.floats(allow_nan=False))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from([*KEYS, "v", "x"]), inner, max_size=4),
), max_leaves=12)
STEPS = st.lists(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), max_size=5)
PIPELINES = st.fixed_dictionaries(
    {"name": SCALARS, "steps": STEPS},
    optional={"vars": st.dictionaries(st.sampled_from(["x", "v"]), SCALARS, max_size=2), "env": VALUES,
              "secrets": VALUES, "timeout": SCALARS, "extra": VALUES},
)


def load_text(text: str) -> Pipeline | InvalidInput:
    try:
        return build_pipeline(parse_yaml(text, PATH), CONFIG)
    except InvalidInput as error:
        assert str(error)  # every user error has something to say
        return error


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PIPELINES)
def test_structured_pipelines_load_or_fail_cleanly(data: dict[str, Any]) -> None:
    outcome = load_text(yaml.safe_dump(data))
    assert isinstance(outcome, Pipeline | InvalidInput)


@settings(max_examples=300, deadline=None)
@given(PIPELINES, st.data())
def test_mutated_text_loads_or_fails_cleanly(data: dict[str, Any], draw: st.DataObject) -> None:
    text = yaml.safe_dump(data)
    position = draw.draw(st.integers(0, len(text)))
    junk = draw.draw(st.sampled_from(["\t", ":", "- ", "{", "]", "&a ", "*a", "!!python/name:os.system ",
                                      "\n  ", "'", '"', "\x00", "\ufeff", "<<: ", "? "]))
    outcome = load_text(text[:position] + junk + text[position:])
    assert isinstance(outcome, Pipeline | InvalidInput)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_fails_cleanly(text: str) -> None:
    assert isinstance(load_text(text), Pipeline | InvalidInput)
