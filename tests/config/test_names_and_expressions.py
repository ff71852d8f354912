"""Image names are names, artifacts stay in the workspace (issue #20 item 8), and GitHub's `${{ }}` is refused
wherever lg renders templates instead of rendering as '$' and the value (item 11): each at file:line:key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lg.config.pipeline import load_pipeline
from lg.config.project import load_project_config
from lg.errors import InvalidInput
from tests.pipeline_errors import Write, errors_of

IMAGE_MESSAGE = "an image is named by its recipe (images/NAME.yaml)"
ARTIFACT_MESSAGE = "an artifact is a path or glob inside the workspace: relative, without '..'"


@pytest.mark.parametrize("image", ["../../../../etc/shadow", "/etc/shadow", "images/tiny", "tiny.yaml", ".hidden",
                                   "a b", "x" * 65])
def test_an_image_must_be_a_name_in_the_pipeline_and_in_a_step(write: Write, image: str) -> None:
    path = write("p.yaml", f"name: x\nimage: '{image}'\nsteps:\n  - id: a\n    run: 'true'\n    image: '{image}'\n")
    shown = image if len(image) <= 40 else image[:37] + "..."
    assert errors_of(path) == [f"{path}:2:8: image: string {shown!r}: {IMAGE_MESSAGE}: up to 64 letters, digits, "
                               "'.', '_' or '-', starting with a letter or digit; not a path",
                               f"{path}:6:12: steps[0].image: string {shown!r}: {IMAGE_MESSAGE}: up to 64 letters, "
                               "digits, '.', '_' or '-', starting with a letter or digit; not a path"]


def test_an_image_in_lg_yaml_must_be_a_name(write: Write) -> None:
    lg_yaml = write("lg.yaml", "image: ../../../../etc/shadow\n")
    with pytest.raises(InvalidInput) as caught:
        load_project_config(lg_yaml.parent)
    assert f"{lg_yaml}:1:8: image: string '../../../../etc/shadow': {IMAGE_MESSAGE}" in str(caught.value)


def test_image_names_that_are_names_load(write: Write) -> None:
    path = write("p.yaml", "name: x\nimage: debian-12.5_slim\nsteps:\n  - {id: a, run: 'true', image: tiny}\n")
    assert load_pipeline(path).steps[0].image == "tiny"


def test_artifacts_outside_the_workspace_are_refused_each_at_its_place(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - id: a
            run: make
            artifacts:
              - /etc/passwd
              - ../../x
              - dist/*.whl
              - build/../../../x
              - ~/.ssh/id_ed25519
              - ..
              - reports/..hidden
        """)
    assert errors_of(path) == [f"{path}:{line}:9: steps[0].artifacts[{index}]: string {value!r}: {ARTIFACT_MESSAGE} "
                               "or a leading '/' or '~'"
                               for line, index, value in [(6, 0, "/etc/passwd"), (7, 1, "../../x"),
                                                          (9, 3, "build/../../../x"), (10, 4, "~/.ssh/id_ed25519"),
                                                          (11, 5, "..")]]


def test_lg_validate_exits_2_naming_each_file_line_and_key(write: Write, lg: Callable[..., Any]) -> None:
    path = write("p.yaml", "name: x\nimage: ../../../../etc/shadow\nsteps:\n"
                           "  - {id: a, run: 'true', artifacts: ['/etc/passwd', '../../x']}\n")
    result = lg("validate", path)
    assert result.code == 2, result.err
    assert f"{path}:2:8: image: string '../../../../etc/shadow'" in result.err
    assert f"{path}:4:38: steps[0].artifacts[0]: string '/etc/passwd'" in result.err
    assert f"{path}:4:53: steps[0].artifacts[1]: string '../../x'" in result.err


# --- GitHub-style expressions -----------------------------------------------------------------------------


def test_github_expression_in_run_is_refused_with_the_lg_form_at_its_line(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - id: test
            matrix: {python: ["3.11", "3.12"]}
            run: |
              echo testing
              python${{ matrix.python }} -m pytest
        """)
    assert errors_of(path) == [  # one error, not one per matrix value
        f"{path}:7: steps[0].run: '${{{{ matrix.python }}}}' is GitHub Actions syntax and would render as '$' then "
        "the value; lg templates are Jinja: write {{ matrix.python }} (for a literal '${{', wrap it in "
        "{% raw %}...{% endraw %})"]


@pytest.mark.parametrize(("field", "key"), [("name: 'test ${{ matrix.v }}'", "steps[0].name"),
                                            ("env: {V: '${{matrix.v}}'}", "steps[0].env.V"),
                                            ("workdir: 'src/${{ matrix.v }}'", "steps[0].workdir")])
def test_github_expressions_are_refused_in_every_templated_field(write: Write, field: str, key: str) -> None:
    path = write("p.yaml", f"name: x\nsteps:\n  - id: a\n    matrix: {{v: [a]}}\n    run: 'true'\n    {field}\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:6:") and f": {key}: '${{{{ matrix.v }}}}' is GitHub Actions syntax" in error
    assert "write {{ matrix.v }}" in error


def test_github_expressions_are_refused_in_the_pipeline_env_and_in_if(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        env: {TOKEN: "${{ secrets.TOKEN }}"}
        steps:
          - id: a
            matrix: {v: [a, b]}
            if: ${{ matrix.v == 'a' }}
            run: 'true'
        """)
    errors = errors_of(path)
    assert errors[0].startswith(f"{path}:2:14: env.TOKEN: '${{{{ secrets.TOKEN }}}}' is GitHub Actions syntax")
    assert errors[1] == (f"{path}:6:9: steps[0].if: '${{{{ matrix.v == 'a' }}}}' is GitHub Actions syntax; lg's "
                         "if: is a bare Jinja expression: write  if: matrix.v == 'a'")
    assert len(errors) == 2


def test_a_literal_dollar_brace_kept_raw_and_shell_dollars_are_fine(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        vars: {v: "1"}
        steps:
          - id: a
            run: |
              echo "${HOME} $((1 + 2)) $ {{ vars.v }}"
              echo '{% raw %}${{ secrets.GITHUB_TOKEN }}{% endraw %}' > .github/workflows/x.yml
        """)
    run = load_pipeline(path).steps[0].run
    assert run is not None and "${{ secrets.GITHUB_TOKEN }}" in run and "$ 1" in run
