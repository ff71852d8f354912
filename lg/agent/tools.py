"""The built-in tools an agent step offers its model, and the checking of what the model asks for.

The model is untrusted input: its arguments may be malformed JSON, name a tool it was not given, point outside
the workspace, or be megabytes long. Each of those becomes a `ToolProblem`, answered to the model as a tool
error; nothing the model sends can make lg itself fail.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

MAX_ARGUMENT_BYTES = 1024 * 1024
"""A tool call's arguments past this are refused unread (a file written through write_file included)."""

_REASON = {"type": "string", "description": "why you make this call (shown to a human reviewer when it is gated)"}
_PATH = {"type": "string", "description": "a path relative to the workspace root"}

TOOL_SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "shell": {
        "description": "Run a /bin/sh command in the workspace of the sandbox VM; returns exit code and output.",
        "parameters": {"type": "object", "required": ["command"],
                       "properties": {"command": {"type": "string"}, "reason": _REASON}},
    },
    "read_file": {
        "description": "Read a text file of the workspace.",
        "parameters": {"type": "object", "required": ["path"], "properties": {"path": _PATH, "reason": _REASON}},
    },
    "write_file": {
        "description": "Create or replace a file of the workspace with the given content.",
        "parameters": {"type": "object", "required": ["path", "content"],
                       "properties": {"path": _PATH, "content": {"type": "string"}, "reason": _REASON}},
    },
    "list_files": {
        "description": "List the files under a directory of the workspace (recursively, at most 500).",
        "parameters": {"type": "object", "properties": {"path": _PATH, "reason": _REASON}},
    },
}


class ToolProblem(Exception):
    """What the model asked for cannot be done as asked: told to the model as the call's result."""


@dataclass(frozen=True)
class ToolCall:
    """One validated call of a tool (built-in, or `server.tool` of an MCP server)."""

    call_id: str
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""  # the model's stated reason: its `reason` argument, else the text that came with the call

    @property
    def path(self) -> str:
        return str(self.arguments.get("path") or ".")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.call_id, "name": self.name, "arguments": dict(self.arguments), "reason": self.reason}


def openai_tools(names: Sequence[str], extra: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """The `tools` parameter of a chat completion: the step's built-in tools, then any MCP tools."""
    return [{"type": "function", "function": {"name": name, **TOOL_SCHEMAS[name]}} for name in names] + [
        dict(tool) for tool in extra]


def parse_call(raw: Mapping[str, Any], offered: Sequence[str], said: str) -> ToolCall:
    """A tool call of an assistant message (OpenAI shape), checked; raises ToolProblem."""
    function = raw.get("function") or {}
    name = str(function.get("name") or "")
    call_id = str(raw.get("id") or "")
    text = function.get("arguments")
    if name not in offered:
        raise ToolProblem(f"unknown tool {name!r}; the tools are: {', '.join(offered) or 'none'}")
    if isinstance(text, str) and len(text.encode()) > MAX_ARGUMENT_BYTES:
        raise ToolProblem(f"the arguments are {len(text.encode())} bytes; at most {MAX_ARGUMENT_BYTES} are accepted")
    try:
        arguments = json.loads(text) if isinstance(text, str) and text.strip() else (text or {})
    except ValueError as error:
        raise ToolProblem(f"the arguments are not valid JSON ({error})") from None
    if not isinstance(arguments, dict):
        raise ToolProblem("the arguments must be a JSON object")
    if name in TOOL_SCHEMAS:
        _check_builtin(name, arguments)
    reason = arguments.get("reason")
    return ToolCall(call_id, name, arguments, reason if isinstance(reason, str) and reason else said.strip())


def _check_builtin(name: str, arguments: Mapping[str, Any]) -> None:
    schema = TOOL_SCHEMAS[name]["parameters"]
    for key in schema.get("required", ()):
        if key not in arguments:
            raise ToolProblem(f"{name} needs the argument {key!r}")
    for key, value in arguments.items():
        if key not in schema["properties"]:
            raise ToolProblem(f"{name} has no argument {key!r}")
        if not isinstance(value, str):
            raise ToolProblem(f"{name}: {key} must be a string")
    if "path" in arguments:
        workspace_path(arguments["path"])


def workspace_path(raw: str) -> str:
    """`raw` as a clean path relative to the workspace root ('.' for the root); raises ToolProblem for one that
    leaves it. Symlinks inside the guest are the guest agent's to refuse (it resolves under the workspace)."""
    if "\0" in raw:
        raise ToolProblem("a path may not contain a NUL byte")
    path = PurePosixPath(raw)
    if path.is_absolute():
        try:
            path = path.relative_to("/workspace")
        except ValueError:
            raise ToolProblem(f"{raw!r} is outside the workspace (/workspace): paths are relative to it") from None
    parts = [part for part in path.parts if part not in ("", ".")]
    if ".." in parts:
        raise ToolProblem(f"{raw!r} leaves the workspace ('..' is not allowed)")
    return "/".join(parts) or "."
