"""An agent step's MCP tools: listed from each server when the step starts (and recorded), offered to the model
as `SERVER__TOOL`, graded by the risk policy's `mcp` rules before each call, and called from lg on the host with
a timeout, never from inside the VM.

The MCP client (lg.agent.mcp_tools, which imports the mcp SDK only when it connects) and the `mcp` rule kind
(lg.policy.mcp_grade) grade and make each call; a call no rule matches is graded at the policy's
`mcp_default_level`, never below yellow, and a server's annotations may raise a grade, never lower it. A server
that is down, slow or answers garbage ends the step with an error naming it (McpServerError). A server's tool
annotations (destructiveHint and the like) are recorded and shown, never used to lower a grade.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lg.agent.loop import Action, Verdict
from lg.agent.mcp_tools import McpServer, McpTool, call_tool, list_tools
from lg.agent.tools import ToolCall
from lg.model import McpServerSpec
from lg.policy.mcp_grade import grade_mcp_call
from lg.policy.model import RiskPolicy

MCP_TIMEOUT = 30.0
"""Seconds a listing or a call of an MCP server may take."""

_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class _Tool:
    server: McpServer
    tool: McpTool


class McpTools:
    """The MCP tools of one agent step."""

    def __init__(self, policy: RiskPolicy, tools: Mapping[str, _Tool], record: Callable[[str, Mapping[str, Any]], None],
                 timeout: float = MCP_TIMEOUT) -> None:
        self.policy, self.tools, self.record, self.timeout = policy, dict(tools), record, timeout

    @classmethod
    def start(cls, servers: Sequence[McpServerSpec], policy: RiskPolicy,
              record: Callable[[str, Mapping[str, Any]], None], timeout: float = MCP_TIMEOUT) -> McpTools:
        tools: dict[str, _Tool] = {}
        for spec in servers:
            server = McpServer(spec.name, spec.url)
            listed = list_tools(server, timeout)  # McpServerError names the server
            record("mcp.tools", {"server": spec.name, "url": spec.url,
                                 "tools": [{"name": t.name, "annotations": dict(t.annotations)} for t in listed]})
            for tool in listed:
                tools[offered_name(spec.name, tool.name)] = _Tool(server, tool)
        return cls(policy, tools, record, timeout)

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def schemas(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {
            "name": name, "description": str(entry.tool.description or "")[:1024],
            "parameters": dict(entry.tool.input_schema) or {"type": "object", "properties": {}}}}
            for name, entry in self.tools.items()]

    def offers(self, name: str) -> bool:
        return name in self.tools

    def grade(self, call: ToolCall) -> Verdict:
        entry = self.tools[call.name]
        arguments = _arguments(call)
        assessment = grade_mcp_call(self.policy, entry.server.name, entry.tool.name, arguments,
                                    annotations=entry.tool.annotations)
        action: Action = "deny" if assessment.denied else "gate" if assessment.gate else "run"
        return Verdict(action, assessment.level.label, tuple(m.rule_id for m in assessment.matches),
                       {**assessment.to_json(), "annotations": dict(entry.tool.annotations)})

    def call(self, call: ToolCall) -> str:
        entry = self.tools[call.name]
        result = call_tool(entry.server, entry.tool.name, _arguments(call), self.timeout)
        return f"error: {result.text}" if result.is_error else str(result.text)


def offered_name(server: str, tool: str) -> str:
    """`SERVER__TOOL` within the character set and length function names may have (OpenAI's: 64)."""
    return _NAME.sub("_", f"{server}__{tool}")[:64]


def _arguments(call: ToolCall) -> dict[str, Any]:
    return {key: value for key, value in call.arguments.items() if key != "reason"}
