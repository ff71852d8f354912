"""The pipeline language: what loads, and a precise error (file:line, key path) for every mistake."""

from __future__ import annotations

from lg.config.pipeline import load_pipeline, topological_order
from tests.pipeline_errors import Write, errors_of


def test_a_full_pipeline_loads(write: Write) -> None:
    path = write("p.yaml", """\
        name: demo
        description: everything at once
        vars: {app: web, replicas: 3}
        env: {APP: "{{ vars.app }}"}
        secrets: [NPM_TOKEN]
        timeout: 1h
        steps:
          - id: build
            run: |
              echo building {{ vars.app }} x{{ vars.replicas }}
              echo "version=1.2" >> "$LG_OUTPUT"
            outputs: [version]
            artifacts: [dist/]
            timeout: 90s
            retries: 2
          - id: test
            needs: build
            matrix: {python: ["3.11", "3.12"], exclude: [{python: "3.12"}]}
            run: echo {{ matrix.python }} {{ steps.build.outputs.version }}
            continue_on_error: true
          - id: deploy
            needs: [test]
            if: steps.build.outputs.version != ''
            approve: {approvers: [alice, "group:release"], count: 2, timeout: 4h, on_timeout: fail}
            run: ./deploy.sh
        """)
    pipeline = load_pipeline(path)
    assert [s.id for s in pipeline.steps] == ["build", "test-3-11", "deploy"]
    build, test, deploy = pipeline.steps
    assert build.run == 'echo building web x3\necho "version=1.2" >> "$LG_OUTPUT"\n'
    assert build.timeout == 90 and build.retries == 2 and pipeline.timeout == 3600
    assert pipeline.env["APP"] == "web"
    # output references stay for run time, matrix values are recorded
    assert test.run == "echo {{ matrix.python }} {{ steps.build.outputs.version }}"
    assert dict(test.matrix) == {"python": "3.11"}
    assert deploy.needs == ("test-3-11",)
    assert deploy.approve is not None and deploy.approve.count == 2 and deploy.approve.timeout == 4 * 3600
    assert [s.id for s in topological_order(pipeline)] == ["build", "test-3-11", "deploy"]


def test_not_a_mapping(write: Write) -> None:
    path = write("p.yaml", "- id: a\n")
    assert errors_of(path) == [f"{path}:1:1: a pipeline must be a mapping with 'name' and 'steps', not a list"]
    path = write("q.yaml", "just text\n")
    assert errors_of(path) == [f"{path}:1:1: a pipeline must be a mapping with 'name' and 'steps', not a str"]


def test_unknown_keys_suggest_the_right_one(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - id: a\n    run: echo\n    neds: [b]\n")
    assert errors_of(path) == [f"{path}:5:5: steps[0].neds: unknown key 'neds' (did you mean 'needs'?)"]


def test_wrong_types_and_enums(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - id: a
            run: echo
            retries: "two"
            continue_on_error: yes-please
            approve: {on_timeout: explode}
        """)
    errors = errors_of(path)
    assert f"{path}:5:14: steps[0].retries: expected integer, got string 'two'" in errors
    assert f"{path}:6:24: steps[0].continue_on_error: expected boolean, got string 'yes-please'" in errors
    assert any("steps[0].approve.on_timeout: 'explode' is not one of 'reject', 'fail', 'continue'" in e
               for e in errors)


def test_bad_step_id_and_missing_steps(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - id: Build Step\n    run: echo\n")
    assert "steps[0].id: 'Build Step' does not match" in errors_of(path)[0]
    path = write("q.yaml", "name: x\n")
    assert errors_of(path) == [f"{path}:1:1: 'steps' is required"]


def test_duplicate_step_ids(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - id: a\n    run: echo\n  - id: a\n    run: echo\n")
    assert errors_of(path) == [f"{path}:5:9: steps[1].id: duplicate step id 'a' (first defined at line 3)"]


def test_needs_an_unknown_step(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - id: build
            run: make
          - id: test
            needs: [biuld]
            run: make test
        """)
    assert errors_of(path) == [f"{path}:6:13: steps[1].needs[0]: unknown step 'biuld' (did you mean 'build'?)"]


def test_cycles_are_printed(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: a, needs: c, run: echo}
          - {id: b, needs: a, run: echo}
          - {id: c, needs: b, run: echo}
        """)
    assert errors_of(path) == [f"{path}:3:20: steps[0].needs: dependency cycle: a -> c -> b -> a"]


def test_self_dependency_is_a_cycle(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - {id: a, needs: a, run: echo}\n")
    assert "dependency cycle: a -> a" in errors_of(path)[0]


def test_matrix_expanding_to_duplicate_ids(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - id: t\n    matrix: {v: ['A', 'a']}\n    run: echo\n")
    assert "steps[0].matrix: matrix expands to the duplicate step id 't-a'" in errors_of(path)[0]


def test_matrix_id_colliding_with_another_step(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: t-1, run: echo}
          - {id: t, matrix: {v: [1, 2]}, run: echo}
        """)
    assert "duplicate step id 't-1' (first defined at line 3)" in errors_of(path)[0]


def test_needs_on_a_matrix_step_means_all_of_it(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: t, matrix: {os: [a, b], py: [1, 2]}, run: "echo {{ matrix.os }}{{ matrix.py }}"}
          - {id: done, needs: t, run: echo}
        """)
    pipeline = load_pipeline(path)
    assert pipeline.step("done").needs == ("t-a-1", "t-a-2", "t-b-1", "t-b-2")
    assert pipeline.step("t-b-2").run == "echo b2"


def test_template_syntax_error_names_the_line_inside_a_block(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - id: a
            run: |
              echo one
              echo {{ vars.x
        """)
    assert errors_of(path)[0].startswith(f"{path}:6: steps[0].run: template syntax error")


def test_undefined_variables_say_what_exists(write: Write) -> None:
    path = write("p.yaml", "name: x\nvars: {name: a}\nsteps:\n  - id: a\n    run: echo {{ vars.nmae }}\n")
    assert errors_of(path) == [
        f"{path}:5:10: steps[0].run: undefined in template: vars.nmae is not defined "
        "(did you mean 'name'?) (vars has: name)",
    ]


def test_output_references_are_checked(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: a, run: echo, outputs: [version]}
          - {id: b, run: "echo {{ steps.a.outputs.version }}"}
          - {id: c, needs: a, run: "echo {{ steps.a.outputs.verison }}"}
          - {id: d, needs: a, run: "echo {{ steps.zz.outputs.x }}"}
        """)
    errors = errors_of(path)
    assert "reads steps.a but does not need 'a'" in errors[0]
    assert "steps.a.outputs.verison is not defined (did you mean 'version'?)" in errors[1]
    assert "steps.zz names an unknown step" in errors[2]


def test_secrets_are_not_templates(write: Write) -> None:
    path = write("p.yaml", "name: x\nsecrets: [TOKEN]\nsteps:\n  - {id: a, run: 'echo {{ secrets.TOKEN }}'}\n")
    assert "secrets reach a step as environment variables" in errors_of(path)[0]


def test_sandbox_blocks_python_internals(write: Write) -> None:
    path = write("p.yaml", "name: x\nvars: {a: b}\nsteps:\n  - {id: a, run: '{{ vars.a.__class__ }}'}\n")
    assert "unsafe" in errors_of(path)[0]


def test_if_expression_errors(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - {id: a, if: 'vars.x ==', run: echo}\n")
    assert "steps[0].if: expression syntax error" in errors_of(path)[0]


def test_uses_needs_a_known_kind_and_run_is_required(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: a, uses: agent}
          - {id: b}
          - {id: c, run: echo, uses: agent}
          - {id: d, uses: robot}
        """)
    errors = errors_of(path)
    assert "steps[0].uses: an agent step needs 'with:' giving at least model and task" in errors[0]
    assert "steps[1]: a step needs 'run' (a shell script) or 'uses'" in errors[1]
    assert "steps[2].uses: a step has either 'run' or 'uses', not both" in errors[2]
    assert "steps[3].uses: unknown step kind 'robot' (known kinds: agent)" in errors[3]


def test_workdir_must_stay_inside_the_workspace(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - {id: a, run: echo, workdir: ../etc}\n")
    assert "workdir must stay inside the workspace" in errors_of(path)[0]


def test_all_errors_are_reported_at_once(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: a, run: "{{ nope }}"}
          - {id: b, needs: zz, run: echo}
          - {id: b, run: echo}
        """)
    assert len(errors_of(path)) == 3


def test_secret_sources(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        secrets:
          TOKEN: {env: CI_TOKEN}
          KEY: {file: keys/deploy}
        steps: [{id: a, run: echo}]
        """)
    pipeline = load_pipeline(path)
    token, key = pipeline.secrets
    assert token.from_env == "CI_TOKEN" and key.from_file == path.parent / "keys/deploy"
