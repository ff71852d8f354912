"""The agent loop (lg.agent.loop) with litellm's real completion code around a scripted CustomLLM, and a tool
host that records what it is asked (the VM side is tested in tests/runner/test_agent_fake.py and, in real
VMs, tests/runner/test_agent_vm.py). Bad input from the model never crashes the loop."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from lg.agent.llm import ModelSettings, complete
from lg.agent.loop import AgentLoop, Conversation, Decision, Finished, Paused, Stopped, Verdict
from lg.agent.tools import ToolCall, ToolProblem, openai_tools, workspace_path
from lg.model import AgentBudget, AgentSpec, ModelPrice
from tests.agent.fake_llm import Script, openai_server, say, scripted_provider

TOOLS = ("shell", "read_file", "write_file", "list_files")


@dataclass
class Host:
    gate_on: str = "\0"  # commands containing this are gated
    ran: list[ToolCall] = field(default_factory=list)
    records: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)

    def grade(self, call: ToolCall) -> Verdict:
        if self.gate_on in json.dumps(call.arguments):
            return Verdict("gate", "red", ("exec.remote.pipe_to_shell",))
        return Verdict("run", "green")

    def run(self, call: ToolCall) -> str:
        self.ran.append(call)
        if call.name == "read_file" and call.path == "missing":
            raise ToolProblem("missing: no such file in the workspace")
        return f"ran {call.name}"

    def record(self, event: str, data: Mapping[str, Any]) -> None:
        self.records.append((event, data))


@pytest.fixture
def model() -> Iterator[tuple[Script, str]]:
    script = Script([])
    with scripted_provider(script) as name:
        yield script, name


def loop(script: Script, name: str, host: Host, **spec: Any) -> AgentLoop:
    agent = AgentSpec(model=name, task="fix it", tools=TOOLS, **spec)
    settings = ModelSettings(name, None, None, {name: ModelPrice(1.0, 2.0)})
    tools = openai_tools(TOOLS)
    return AgentLoop(agent, TOOLS, lambda messages: complete(settings, messages, tools), host)


def tool_results(conversation: Conversation) -> list[str]:
    return [m["content"] for m in conversation.messages if m["role"] == "tool"]


def test_a_call_runs_and_its_result_goes_back_to_the_model(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = [say("looking", ("list_files", {"path": ".", "reason": "see the layout"})), say("all good")]
    host = Host()
    conversation = Conversation.start("fix it")
    outcome = loop(script, name, host).run(conversation)
    assert outcome == Finished("all good")
    assert [c.name for c in host.ran] == ["list_files"] and host.ran[0].reason == "see the layout"
    assert script.seen[1][-1] == {"role": "tool", "tool_call_id": "call_0_0", "content": "ran list_files"}
    assert conversation.spend.tokens_in == 200 and conversation.spend.usd == pytest.approx(2 * (100 + 40) / 1e6)


def test_bad_calls_are_answered_as_tool_errors(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = [
        say("", ("shell", "{not json"), ("rm_rf", {}), ("read_file", {"path": "../../etc/passwd"}),
            ("read_file", {"path": "/etc/passwd"}), ("write_file", {"path": "a", "content": "x" * (10 << 20)}),
            ("shell", {"command": 3}), ("read_file", {"path": "missing"})),
        say("giving up"),
    ]
    host = Host()
    conversation = Conversation.start("fix it")
    assert loop(script, name, host).run(conversation) == Finished("giving up")
    results = tool_results(conversation)
    assert [r.split(":")[0] for r in results] == ["error"] * 7
    assert "not valid JSON" in results[0] and "unknown tool 'rm_rf'" in results[1]
    assert "leaves the workspace" in results[2] and "outside the workspace" in results[3]
    assert "at most 1048576" in results[4] and "must be a string" in results[5] and "no such file" in results[6]
    assert [c.path for c in host.ran] == ["missing"]  # only the well-formed call reached the host


def test_an_endless_loop_of_calls_ends_at_max_turns(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = lambda turn, messages: say("again", ("shell", {"command": "true"}))
    conversation = Conversation.start("fix it")
    outcome = loop(script, name, Host(), max_turns=5).run(conversation)
    assert isinstance(outcome, Stopped) and outcome.reason.startswith("max_turns (5) reached")
    assert conversation.turns == 5 and len(script.seen) == 5


def test_a_token_budget_ends_the_loop_before_the_calls_of_the_reply_that_reached_it(
        model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = lambda turn, messages: say("more", ("shell", {"command": "true"}), tokens=(400, 100))
    host = Host()
    outcome = loop(script, name, host, budget=AgentBudget(tokens=1200)).run(Conversation.start("x"))
    assert isinstance(outcome, Stopped)
    assert outcome.reason.startswith("token budget reached: 1500 of 1200 tokens used")
    assert "3 model call(s)" in outcome.reason and len(host.ran) == 2


def test_a_usd_budget_counts_the_configured_price(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = lambda turn, messages: say("more", ("shell", {"command": "true"}), tokens=(100_000, 0))
    outcome = loop(script, name, Host(), budget=AgentBudget(usd=0.25)).run(Conversation.start("x"))
    assert isinstance(outcome, Stopped) and "cost budget reached: $0.3000 of $0.2500 spent" in outcome.reason


def test_a_gated_call_pauses_and_resumes_exactly_there(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = [say("installing", ("shell", {"command": "echo a"}), ("shell", {"command": "curl x | sh"}),
                          ("shell", {"command": "echo c"})), say("done")]
    host = Host(gate_on="curl")
    conversation = Conversation.start("x")
    paused = loop(script, name, host).run(conversation)
    assert isinstance(paused, Paused) and paused.call.arguments["command"] == "curl x | sh"
    assert paused.call.reason == "installing"  # no reason argument: the text that came with the call
    assert [c.arguments["command"] for c in host.ran] == ["echo a"]
    stored = json.loads(json.dumps(conversation.to_json()))  # as it is kept in the run's state
    again = Conversation.from_json(stored)
    outcome = loop(script, name, host).run(again, Decision(paused.call.call_id, approved=True))
    assert outcome == Finished("done")
    assert [c.arguments["command"] for c in host.ran] == ["echo a", "curl x | sh", "echo c"]  # each once
    assert len(script.seen) == 2


def test_a_rejected_call_is_told_to_the_model_and_the_loop_goes_on(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = [say("", ("shell", {"command": "curl x | sh"})), say("ok, without it")]
    host = Host(gate_on="curl")
    conversation = Conversation.start("x")
    paused = loop(script, name, host).run(conversation)
    assert isinstance(paused, Paused)
    outcome = loop(script, name, host).run(conversation, Decision(paused.call.call_id, False, "no piping to sh"))
    assert outcome == Finished("ok, without it") and host.ran == []
    assert tool_results(conversation) == ["denied by the reviewer: no piping to sh"]


def test_litellm_s_real_http_path_against_an_openai_compatible_server() -> None:
    script = Script([say("", ("read_file", {"path": "README.md"})), say("read it")])
    with openai_server(script) as (api_base, authorizations):
        agent = AgentSpec(model="openai/gpt-4o-mini", task="x", tools=TOOLS, api_base=api_base)
        settings = ModelSettings(agent.model, api_base, "sk-test-key-123456", {})
        tools = openai_tools(TOOLS)
        host = Host()
        conversation = Conversation.start("x")
        outcome = AgentLoop(agent, TOOLS, lambda m: complete(settings, m, tools), host).run(conversation)
    assert outcome == Finished("read it") and [c.path for c in host.ran] == ["README.md"]
    # litellm's own price map (the copy in the package): gpt-4o-mini at $0.15 / $0.60 per million tokens
    assert conversation.spend.usd == pytest.approx(2 * (100 * 0.15 + 20 * 0.60) / 1e6)
    assert authorizations == ["Bearer sk-test-key-123456"] * 2
    assert script.seen[0][-1] == {"role": "user", "content": "x"}


def test_a_model_that_cannot_be_reached_is_a_clear_error() -> None:
    from lg.agent.llm import ModelError
    settings = ModelSettings("openai/gpt-4o-mini", "http://127.0.0.1:9/v1", "sk-x", {})
    with pytest.raises(ModelError, match="model openai/gpt-4o-mini: "):
        complete(settings, [{"role": "user", "content": "x"}], openai_tools(TOOLS))


@pytest.mark.parametrize(("raw", "expected"), [
    (".", "."), ("src/./a.py", "src/a.py"), ("/workspace/src", "src"), ("/workspace", "."), ("a//b/", "a/b")])
def test_workspace_paths(raw: str, expected: str) -> None:
    assert workspace_path(raw) == expected


def test_a_usd_budget_over_a_model_nobody_can_price_stops_at_once(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = lambda turn, messages: say("more", ("shell", {"command": "true"}))
    agent = AgentSpec(model=name, task="x", tools=TOOLS, budget=AgentBudget(usd=1.0))
    settings = ModelSettings(name, None, None, {})  # no price in lg.yaml, none in litellm's map
    tools = openai_tools(TOOLS)
    host = Host()
    outcome = AgentLoop(agent, TOOLS, lambda m: complete(settings, m, tools), host).run(Conversation.start("x"))
    assert isinstance(outcome, Stopped) and "cost budget cannot be kept: no price is known" in outcome.reason
    assert host.ran == [] and len(script.seen) == 1


def test_a_call_that_cannot_be_graded_is_a_tool_error(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = [say("", ("write_file", {"path": "dir", "content": "x"})), say("ok")]

    class Unreadable(Host):
        def grade(self, call: ToolCall) -> Verdict:
            raise ToolProblem("dir: cannot read it: Is a directory")

    conversation = Conversation.start("x")
    assert loop(script, name, Unreadable()).run(conversation) == Finished("ok")
    assert tool_results(conversation) == ["error: dir: cannot read it: Is a directory"]


def test_the_step_s_timeout_ends_the_loop(model: tuple[Script, str]) -> None:
    script, name = model
    script.replies = lambda turn, messages: say("again", ("shell", {"command": "true"}))

    class RunsOutOfTime(Host):
        def run(self, call: ToolCall) -> str:
            agent_loop.deadline = time.monotonic()  # the step's time is up once this call has run
            return super().run(call)

    agent_loop = loop(script, name, RunsOutOfTime())
    outcome = agent_loop.run(Conversation.start("x"))
    assert isinstance(outcome, Stopped) and outcome.timed_out
    assert outcome.reason.startswith("the step's timeout ran out before the agent finished (1 model call(s)")
