"""The keys of parallel runs: max_parallel and fail_fast (pipeline, matrix, lg.yaml), matrix include/exclude, and
the status functions an `if:` may call, each checked when the pipeline is loaded."""

from __future__ import annotations

import pytest

from lg.config.pipeline import load_pipeline
from lg.config.project import load_project_config
from lg.errors import InvalidInput
from lg.model import MatrixGroup
from tests.pipeline_errors import Write, errors_of


def test_pipeline_max_parallel_and_fail_fast(write: Write) -> None:
    text = "name: x\nmax_parallel: 3\nfail_fast: false\nsteps: [{id: a, run: echo}]\n"
    pipeline = load_pipeline(write("p.yaml", text))
    assert (pipeline.max_parallel, pipeline.fail_fast) == (3, False)
    default = load_pipeline(write("q.yaml", "name: x\nsteps: [{id: a, run: echo}]\n"))
    assert (default.max_parallel, default.fail_fast) == (None, True)


@pytest.mark.parametrize(("text", "expected"), [
    ("max_parallel: 0", "max_parallel"),
    ("max_parallel: two", "max_parallel"),
    ("fail_fast: maybe", "fail_fast"),
])
def test_bad_pipeline_values_name_their_key_and_line(write: Write, text: str, expected: str) -> None:
    path = write("p.yaml", f"name: x\n{text}\nsteps: [{{id: a, run: echo}}]\n")
    (error,) = errors_of(path)
    assert "p.yaml:2" in error and expected in error


def test_lg_yaml_max_parallel(write: Write) -> None:
    write("lg.yaml", "max_parallel: 6\n")
    assert load_project_config(write("p.yaml", "").parent).max_parallel == 6
    write("lg.yaml", "max_parallel: -1\n")
    with pytest.raises(InvalidInput, match="max_parallel"):
        load_project_config(write("p.yaml", "").parent)


def test_matrix_include_adds_to_matching_combinations_or_adds_its_own(write: Write) -> None:
    # As GitHub Actions documents it: an include that changes no axis value extends the combinations it matches
    # (here every python 3.12 one), one that would change an axis value is a combination of its own.
    path = write("p.yaml", """\
        name: x
        steps:
          - id: t
            matrix:
              os: [linux, mac]
              python: ["3.11", "3.12"]
              exclude: [{os: mac, python: "3.11"}]
              include:
                - {python: "3.12", experimental: true}
                - {os: windows, python: "3.12"}
            run: echo {{ matrix.os }} {{ matrix.python }}
        """)
    steps = load_pipeline(path).steps
    assert [dict(step.matrix) for step in steps] == [
        {"os": "linux", "python": "3.11"},
        {"os": "linux", "python": "3.12", "experimental": "true"},
        {"os": "mac", "python": "3.12", "experimental": "true"},
        {"os": "windows", "python": "3.12"},
    ]
    assert [step.id for step in steps] == ["t-linux-3-11", "t-linux-3-12-true", "t-mac-3-12-true", "t-windows-3-12"]


def test_a_matrix_of_includes_alone(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - id: t
            matrix: {include: [{target: arm}, {target: x86}]}
            run: echo {{ matrix.target }}
        """)
    assert [step.run for step in load_pipeline(path).steps] == ["echo arm", "echo x86"]


def test_matrix_max_parallel_and_fail_fast_reach_every_expansion(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: t, matrix: {n: [1, 2], max_parallel: 1, fail_fast: false}, run: "echo {{ matrix.n }}"}
          - {id: plain, run: echo}
        """)
    pipeline = load_pipeline(path)
    assert [step.matrix_group for step in pipeline.steps] == [MatrixGroup("t", 1, False)] * 2 + [None]
    assert dict(pipeline.steps[0].matrix) == {"n": "1"}  # the keywords are not axes


@pytest.mark.parametrize(("matrix", "expected"), [
    ("{max_parallel: 2}", "expands to no step"),
    ("{n: [1], exclude: [{n: 1}]}", "expands to no step"),
    ("{n: [1], max_parallel: 0}", "max_parallel"),
    ("{n: [1], fail_fast: 3}", "fail_fast"),
    ("{n: [1], include: [{}]}", "include"),
])
def test_bad_matrices_are_refused_at_their_line(write: Write, matrix: str, expected: str) -> None:
    path = write("p.yaml", f"name: x\nsteps:\n  - id: t\n    matrix: {matrix}\n    run: echo\n")
    errors = errors_of(path)
    assert any(expected in error and "p.yaml:4" in error for error in errors), errors


@pytest.mark.parametrize("condition", [
    "always()", "success()", "failure()", "cancelled()", "failure() and vars.x == 'y'",
    "always() or vars.x == 'y'", "not cancelled() and steps.a.status == 'succeeded'",
])
def test_status_functions_are_accepted_in_if(write: Write, condition: str) -> None:
    path = write("p.yaml", f"""\
        name: x
        vars: {{x: y}}
        steps:
          - {{id: a, run: echo}}
          - {{id: b, needs: a, if: "{condition}", run: echo}}
        """)
    assert load_pipeline(path).step("b").condition == condition


@pytest.mark.parametrize(("condition", "expected"), [
    ("failure() and vars.nope == 'y'", "vars.nope is not defined"),
    ("always() or vars.nope == 1", "vars.nope is not defined"),  # checked past a short-circuit too
    ("failed()", "'failed' is not defined"),
])
def test_mistakes_next_to_status_functions_are_found_at_load(write: Write, condition: str, expected: str) -> None:
    path = write("p.yaml", f"""\
        name: x
        vars: {{x: y}}
        steps:
          - {{id: a, if: "{condition}", run: echo}}
        """)
    (error,) = errors_of(path)
    assert expected in error and "p.yaml:4" in error


def test_status_functions_are_for_if_only(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - {id: a, run: 'echo {{ failure() }}'}\n")
    (error,) = errors_of(path)
    assert "'failure' is not defined" in error
