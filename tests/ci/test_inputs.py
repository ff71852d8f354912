"""Run inputs (issue #19 item 3): declared with a type, default and description; `--input NAME=VALUE` checked
before anything runs (exit 2 naming the input and what it accepts); read in templates as `inputs.NAME`; shown by
`lg render`; recorded with the run, and bound again from the record by `lg resume`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.config.inputs import parse_assignments
from lg.config.pipeline import load_pipeline
from lg.config.project import load_project_config
from lg.errors import InvalidInput, InvalidInputs
from lg.runs.store import RunStore

DEPLOY = """\
    name: deploy
    inputs:
      target:
        type: choice
        options: [staging, production]
        description: where to deploy
      replicas:
        type: number
        default: 2
      dry:
        type: boolean
        default: true
      note:
        description: free text
    steps:
      - id: plan
        run: |
          echo "target={{ inputs.target }} replicas={{ inputs.replicas }} dry={{ inputs.dry }} note={{ inputs.note }}"
          echo "{{ inputs.replicas * 2 }}" > doubled.txt
      - id: only-when-dry
        if: inputs.dry and inputs.target == 'staging'
        run: echo dry run > dry.txt
      - id: gated
        needs: plan
        approve: true
        run: echo "{{ inputs.target }} {{ steps.plan.status }}" > after-gate.txt
"""


def load(path: Path, given: dict[str, str] | None) -> Any:
    return load_pipeline(path, load_project_config(path.parent), given)


def test_values_are_read_as_their_declared_type_and_rendered(pipeline_file: Callable[[str], Path]) -> None:
    path = pipeline_file(DEPLOY)
    pipeline = load(path, {"target": "staging", "replicas": "3", "dry": "no", "note": "a b"})
    assert dict(pipeline.input_values) == {"target": "staging", "replicas": 3, "dry": False, "note": "a b"}
    run = pipeline.step("plan").run or ""
    assert run.splitlines()[0] == 'echo "target=staging replicas=3 dry=false note=a b"'
    assert run.splitlines()[1] == 'echo "6" > doubled.txt'  # a number is a number in templates
    defaults = load(path, {"target": "production", "note": ""})
    assert dict(defaults.input_values) == {"target": "production", "replicas": 2, "dry": True, "note": ""}


@pytest.mark.parametrize(("given", "message"), [
    ({"target": "qa", "note": "x"}, "--input target=qa: target accepts one of staging, production (declared at "),
    ({"target": "staging", "note": "x", "replicas": "two"}, "--input replicas=two: replicas accepts a number"),
    ({"target": "staging", "note": "x", "replicas": "nan"}, "--input replicas=nan: replicas accepts a number"),
    ({"target": "staging", "note": "x", "dry": "maybe"}, "--input dry=maybe: dry accepts true or false"),
    ({"target": "staging", "note": "x", "replica": "3"},
     "--input replica: the pipeline declares no input 'replica' (did you mean 'replicas'?)"),
    ({"note": "x"}, "required input(s) not given (declared without a default: target at "),
])
def test_a_bad_input_names_the_key_and_what_it_accepts(pipeline_file: Callable[[str], Path],
                                                       given: dict[str, str], message: str) -> None:
    path = pipeline_file(DEPLOY)
    with pytest.raises(InvalidInput) as caught:
        load(path, given)
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(message), str(caught.value)
    if "declared at" in message:
        assert f"declared at {path}:3)" in str(caught.value)


def test_assignments_split_on_the_first_equals_sign() -> None:
    assert parse_assignments(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(InvalidInput, match="expected NAME=VALUE"):
        parse_assignments(["novalue"])
    with pytest.raises(InvalidInput, match="given twice"):
        parse_assignments(["a=1", "a=2"])


def test_declarations_are_checked_at_their_line(pipeline_file: Callable[[str], Path]) -> None:
    path = pipeline_file("""\
        name: bad
        inputs:
          size: {type: number, default: big}
          mode: {type: choice}
          flag: {type: boolean, options: [a]}
          when: {type: string, default: true}
        steps:
          - {id: a, run: "echo {{ inputs.size }}"}
        """)
    with pytest.raises(InvalidInputs) as caught:
        load(path, None)
    assert [str(error) for error in caught.value.errors] == [
        f"{path}:3:33: inputs.size.default: the default 'big' does not fit: the input accepts a number",
        f"{path}:4:9: inputs.mode: a choice input needs 'options': the values it accepts",
        f"{path}:5:25: inputs.flag.options: 'options' is for a choice input; this one is a boolean",
        f"{path}:6:33: inputs.when.default: the default true is a boolean, but the input is a string",
    ]


def test_validate_checks_templates_without_values(lg: Callable[..., Any], pipeline_file: Callable[[str], Path]) -> None:
    assert lg("validate", pipeline_file(DEPLOY)).code == 0
    typo = pipeline_file(DEPLOY.replace("inputs.note }}", "inputs.notes }}"))
    result = lg("validate", typo)
    assert result.code == 2 and "inputs.notes is not defined (did you mean 'note'?" in result.err


def test_render_shows_the_inputs_and_their_values(lg: Callable[..., Any], pipeline_file: Callable[[str], Path]) -> None:
    path = pipeline_file(DEPLOY)
    result = lg("render", "--json", path, "--input", "target=production", "--input", "note=hi")
    assert result.code == 0, result.err
    view = json.loads(result.out)
    assert view["inputs"]["target"] == {"type": "choice", "value": "production", "required": True,
                                        "options": ["staging", "production"], "description": "where to deploy"}
    assert view["inputs"]["replicas"] == {"type": "number", "value": 2, "default": 2}
    refused = lg("render", path, "--input", "target=production")
    assert refused.code == 2 and "--input note=<any text>" in refused.err


def test_a_run_records_its_inputs_and_resume_binds_them_again(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    bad = lg("run", pipeline_file(DEPLOY), "--input", "target=prod", "--input", "note=x")
    assert bad.code == 2 and "target accepts one of staging, production" in bad.err
    assert not (fake_project / ".lg").exists() or RunStore(fake_project / ".lg").runs(5) == []  # nothing ran
    paused = lg("run", "pipeline.yaml", "--input", "target=staging", "--input", "note=first words",
                "--input", "replicas=4")
    assert paused.code == 3, paused.err
    assert "target=staging replicas=4 dry=true note=first words" in paused.out
    assert (fake_project / "doubled.txt").read_text() == "8\n"
    assert (fake_project / "dry.txt").read_text() == "dry run\n"  # if: read the boolean input
    store = RunStore(fake_project / ".lg")
    record = store.runs(1)[0]
    assert record.input_values == {"target": "staging", "replicas": 4, "dry": True, "note": "first words"}
    created = next(r for r in store.audit_log.records() if r.kind == "run.created")
    assert created.data["input_values"] == record.input_values
    assert lg("approve", record.id, "gated.before").code == 0
    resumed = lg("resume", record.id)
    assert resumed.code == 0, resumed.err
    assert (fake_project / "after-gate.txt").read_text() == "staging succeeded\n"  # the recorded value


def test_status_shows_the_recorded_inputs(lg: Callable[..., Any], pipeline_file: Callable[[str], Path]) -> None:
    pipeline_file("""\
        name: greet
        inputs: {who: {default: world}, times: {type: number, default: 1}}
        steps:
          - {id: hi, run: "echo hello {{ inputs.who }} x{{ inputs.times }}"}
        """)
    result = lg("run", "pipeline.yaml", "--input", "who=lg users")
    assert result.code == 0, result.err
    assert "[hi] hello lg users x1" in result.out
    run_id = RunStore(Path.cwd() / ".lg").runs(1)[0].id
    shown = lg("status", run_id)
    assert "  inputs: who='lg users'  times=1" in shown.out
    assert json.loads(lg("status", "--json", run_id).out)["run"]["input_values"] == {"who": "lg users", "times": 1}
