"""The agent loop: ask the model, grade each tool call it makes, run it, answer it, until the model stops
calling tools, a budget is reached or max_turns runs out.

The loop is a pure state machine over a `Conversation` (plain JSON, stored with the run at a gate) and a
`ToolHost` (the runner's side: grading, running calls in the VM, recording). A call graded at or over the gate
threshold returns `Paused` with the conversation exactly as it was: the call stays first among the pending
ones, so resuming with the reviewer's `Decision` goes on exactly there, and the call runs (or is denied) once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lg.agent.costs import Spend
from lg.agent.llm import ModelReply
from lg.agent.tools import ToolCall, ToolProblem, parse_call
from lg.model import AgentSpec

MAX_RESULT_CHARS = 64 * 1024
"""A tool result longer than this is cut (the model is told) so that one `cat` cannot fill its context."""

SYSTEM_PROMPT = (
    "You work in a sandbox VM on the repository in /workspace, through the tools you are given. Each tool call is "
    "checked by a risk policy before it runs; a risky one waits for a human reviewer, who may deny it. Give a "
    "short reason with every call. When the task is done, answer without calling a tool."
)


@dataclass
class Conversation:
    """Everything the loop needs to go on later, in another process: JSON, stored with the run at a gate."""

    messages: list[dict[str, Any]]
    pending: list[dict[str, Any]] = field(default_factory=list)  # tool calls of the last reply, not yet answered
    said: str = ""  # the text of the reply that made them (a call's reason when it gives none of its own)
    turns: int = 0  # model calls made
    tool_calls: int = 0  # tool calls answered
    spend: Spend = field(default_factory=Spend)

    @classmethod
    def start(cls, task: str) -> Conversation:
        return cls([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task}])

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, "unanswered": self.pending, "said": self.said, "turns": self.turns,
                "tool_calls": self.tool_calls, "spend": self.spend.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Conversation:
        return cls(list(data["messages"]), list(data.get("unanswered", [])), str(data.get("said", "")),
                   int(data.get("turns", 0)), int(data.get("tool_calls", 0)), Spend.from_json(data.get("spend", {})))

    def answer(self, call_id: str, text: str) -> None:
        if len(text) > MAX_RESULT_CHARS:
            text = text[:MAX_RESULT_CHARS] + f"\n[cut: {len(text) - MAX_RESULT_CHARS} more characters]"
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        self.pending.pop(0)
        self.tool_calls += 1


Action = Literal["run", "deny", "gate"]


@dataclass(frozen=True)
class Verdict:
    """The policy's word on one call, before it runs."""

    action: Action
    level: str  # the grade's label
    rules: tuple[str, ...] = ()  # the rules that fired
    grade: Mapping[str, Any] = field(default_factory=dict)  # the whole assessment, for the record and the card


@dataclass(frozen=True)
class Decision:
    """A reviewer's decision on a gated call, given when the loop resumes."""

    call_id: str
    approved: bool
    reason: str = ""


class ToolHost(Protocol):
    def grade(self, call: ToolCall) -> Verdict: ...

    def run(self, call: ToolCall) -> str:
        """The call's result text; raises ToolProblem for a failure the model should be told about."""
        ...

    def record(self, event: str, data: Mapping[str, Any]) -> None:
        """The transcript and the audit log (a model reply, a call's grade, decision and result)."""
        ...


@dataclass(frozen=True)
class Finished:
    answer: str


@dataclass(frozen=True)
class Paused:
    call: ToolCall
    verdict: Verdict


@dataclass(frozen=True)
class Stopped:
    """The step ends without finishing (exit 1): a budget was reached, max_turns ran out, or its timeout."""

    reason: str
    timed_out: bool = False


Outcome = Finished | Paused | Stopped
Model = Callable[[Sequence[Mapping[str, Any]]], ModelReply]


@dataclass
class AgentLoop:
    spec: AgentSpec
    offered: Sequence[str]  # tool names the model was given (built-in ones, then `server__tool` of MCP servers)
    model: Model
    host: ToolHost
    deadline: float | None = None  # time.monotonic() when the step's timeout runs out

    def run(self, conversation: Conversation, decision: Decision | None = None) -> Outcome:
        while True:
            paused = self._answer_pending(conversation, decision)
            decision = None
            if paused is not None:
                return paused
            last = conversation.messages[-1]
            if last.get("role") == "assistant" and not last.get("tool_calls"):
                return Finished(str(last.get("content") or ""))
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return Stopped(f"the step's timeout ran out before the agent finished ({conversation.spend.summary()})",
                               timed_out=True)
            limit = self._limit(conversation)
            if limit is not None:
                return Stopped(limit)
            reply = self.model(conversation.messages)
            conversation.turns += 1
            conversation.spend = conversation.spend.add(reply.tokens_in, reply.tokens_out, reply.usd)
            conversation.messages.append(reply.message)
            conversation.pending = reply.tool_calls
            conversation.said = reply.content
            self.host.record("model", {"turn": conversation.turns, "content": reply.content,
                                       "tool_calls": reply.tool_calls, "tokens_in": reply.tokens_in,
                                       "tokens_out": reply.tokens_out, "usd": reply.usd,
                                       "spent": conversation.spend.to_json()})
            if reply.usd is None and self.spec.budget.usd is not None:  # fail closed: it cannot be kept
                return Stopped(f"the cost budget cannot be kept: no price is known for model {self.spec.model} "
                               "(litellm's price map does not list it; give it in lg.yaml model_prices) "
                               f"({conversation.spend.summary()})")
            over = conversation.spend.over(self.spec.budget)
            if over is not None and reply.tool_calls:  # its calls are not run: what they would do is not paid for
                return Stopped(f"{over} ({conversation.spend.summary()})")

    def _limit(self, conversation: Conversation) -> str | None:
        over = conversation.spend.over(self.spec.budget)
        if over is not None:
            return f"{over} ({conversation.spend.summary()})"
        if conversation.turns >= self.spec.max_turns:
            return (f"max_turns ({self.spec.max_turns}) reached before the agent finished "
                    f"({conversation.spend.summary()})")
        return None

    def _answer_pending(self, conversation: Conversation, decision: Decision | None) -> Paused | None:
        while conversation.pending:
            raw = conversation.pending[0]
            call_id = str(raw.get("id") or "")
            try:
                call = parse_call(raw, self.offered, conversation.said)
            except ToolProblem as problem:
                self.host.record("call.refused", {"id": call_id, "name": _name(raw), "error": str(problem)})
                conversation.answer(call_id, f"error: {problem}")
                continue
            if decision is not None and decision.call_id == call.call_id:
                text = self._decided(call, decision)
            else:
                try:
                    verdict = self.host.grade(call)
                except ToolProblem as problem:  # e.g. a write over a path the guest cannot read
                    self.host.record("call.refused", {"id": call_id, "name": call.name, "error": str(problem)})
                    conversation.answer(call_id, f"error: {problem}")
                    continue
                if verdict.action == "gate":
                    return Paused(call, verdict)
                text = self._denied(call, verdict) if verdict.action == "deny" else self._run(call)
            decision = None
            conversation.answer(call.call_id, text)
        return None

    def _decided(self, call: ToolCall, decision: Decision) -> str:
        if decision.approved:
            return self._run(call)
        text = f"denied by the reviewer: {decision.reason or 'no reason given'}"
        self.host.record("call.result", {"id": call.call_id, "name": call.name, "result": text})
        return text

    def _denied(self, call: ToolCall, verdict: Verdict) -> str:
        text = f"denied by the risk policy ({verdict.level}: {', '.join(verdict.rules) or 'no rule named'})"
        self.host.record("call.result", {"id": call.call_id, "name": call.name, "result": text})
        return text

    def _run(self, call: ToolCall) -> str:
        try:
            text = self.host.run(call)
        except ToolProblem as problem:
            text = f"error: {problem}"
        self.host.record("call.result", {"id": call.call_id, "name": call.name, "result": text})
        return text


def _name(raw: Mapping[str, Any]) -> str:
    function = raw.get("function")
    return str(function.get("name")) if isinstance(function, Mapping) else ""
