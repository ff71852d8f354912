"""`uses: agent` in a pipeline: its `with:` keys load into lg.model.AgentSpec, and every mistake is reported at
its file, line and key."""

from __future__ import annotations

from lg.config.pipeline import load_pipeline
from lg.model import AgentBudget, AgentSpec, McpServerSpec
from tests.pipeline_errors import Write, errors_of


def test_an_agent_step_loads(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        vars: {target: tests}
        secrets: [OPENAI_API_KEY]
        steps:
          - id: fix
            uses: agent
            with:
              model: openai/gpt-4o-mini
              api_base: http://127.0.0.1:8000/v1
              task: "make {{ vars.target }} pass"
              tools: [shell, read_file, write_file, list_files]
              mcp: [{name: tickets, url: "http://127.0.0.1:9000/mcp"}]
              max_turns: 12
              budget: {usd: 0.5, tokens: 200000}
              api_key: OPENAI_API_KEY
        """)
    (step,) = load_pipeline(path).steps
    assert step.uses == "agent" and step.run is None
    assert step.agent == AgentSpec(
        model="openai/gpt-4o-mini", task="make tests pass", tools=("shell", "read_file", "write_file", "list_files"),
        mcp=(McpServerSpec("tickets", "http://127.0.0.1:9000/mcp"),), max_turns=12,
        budget=AgentBudget(usd=0.5, tokens=200000), api_key="OPENAI_API_KEY", api_base="http://127.0.0.1:8000/v1")


def test_defaults(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - {id: a, uses: agent, with: {model: m, task: t}}\n")
    (step,) = load_pipeline(path).steps
    assert step.agent == AgentSpec(model="m", task="t", tools=(), max_turns=20)


def test_mistakes_name_their_line_and_key(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        secrets: [OPENAI_API_KEY]
        steps:
          - id: a
            uses: agent
            with: {model: m, task: t, api_key: OPENAI_KEY}
          - id: c
            run: echo
            with: {model: m, task: t}
          - id: d
            uses: agent
            with: {model: m, task: t, mcp: [{name: a, url: "http://x"}, {name: a, url: "http://y"}]}
          - id: e
            uses: agent
            with: {model: m, task: "{{ vars.nope }}"}
        """)
    errors = errors_of(path)
    assert any(":6:" in e and "api_key names the secret 'OPENAI_KEY', which is not declared in 'secrets:'" in e
               and "OPENAI_API_KEY" in e for e in errors), errors
    assert any("steps[1].with: 'with' belongs to a step with 'uses'" in e for e in errors), errors
    assert any("steps[2].with.mcp[1].name: duplicate MCP server name 'a'" in e for e in errors), errors
    assert any("steps[3].with.task" in e and "nope" in e for e in errors), errors


def test_an_unknown_tool_is_a_schema_error_at_its_line(write: Write) -> None:
    path = write("p.yaml", "name: x\nsteps:\n  - {id: b, uses: agent, with: {model: m, task: t, tools: [browser]}}\n")
    (error,) = errors_of(path)
    assert ":3:" in error and "steps[0].with.tools[0]: 'browser' is not one of 'shell'" in error


def test_budget_and_turns_must_be_positive(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - {id: a, uses: agent, with: {model: m, task: t, max_turns: 0, budget: {usd: 0}}}
        """)
    errors = " ".join(errors_of(path))
    assert "max_turns" in errors and "budget.usd" in errors


def test_model_prices_come_from_lg_yaml(write: Write) -> None:
    from lg.config.project import load_project_config
    from lg.model import ModelPrice

    write("lg.yaml", "model_prices:\n  local/llama: {input: 0.5, output: 1.5}\n")
    config = load_project_config(write("p.yaml", "name: x\nsteps: [{id: a, run: echo}]\n").parent)
    assert dict(config.model_prices) == {"local/llama": ModelPrice(0.5, 1.5)}
    assert config.model_prices["local/llama"].cost(1_000_000, 2_000_000) == 3.5


def test_validating_an_agent_pipeline_does_not_import_litellm() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import sys; from lg.cli.main import run; "
            f"code = run(['validate', '{REPO / 'pipelines/agent-fix/pipeline.yaml'}']); "
            "print(code, [m for m in sys.modules if m.split('.')[0] == 'litellm'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "0 []"


def test_keys_that_do_not_apply_to_an_agent_step_are_refused_at_their_line(write: Write) -> None:
    path = write("p.yaml", """\
        name: x
        steps:
          - id: a
            uses: agent
            retries: 2
            workdir: src
            with: {model: m, task: t}
        """)
    errors = errors_of(path)
    assert any(":5:" in e and "'retries' does not apply to an agent step" in e for e in errors), errors
    assert any(":6:" in e and "'workdir' does not apply to an agent step" in e for e in errors), errors
