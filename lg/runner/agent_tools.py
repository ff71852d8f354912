"""The runner's side of an agent step's tool calls (lg.agent.loop.ToolHost): each call graded by the pipeline's
risk policy before it runs, then run inside the step's VM, as the step's user, under the step's confinement.

Commands are graded as commands; a write is graded as the effect it would have (the file it creates or
changes, with its content); reads and listings are graded as the `cat`/`find` commands they are. An MCP call
is graded by the policy's `mcp` rules (lg.policy.mcp_grade) and made from the host (lg.agent.mcp_tools), never
from the VM. Every grade, call and result is a line of the step's log and a record of the audit log.
"""

from __future__ import annotations

import difflib
import hashlib
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lg.agent.loop import Action, Verdict
from lg.agent.tools import ToolCall, ToolProblem, workspace_path
from lg.model import FileChange
from lg.policy.content import InlineContent
from lg.policy.grade import grade_effects, grade_script
from lg.policy.model import Assessment, RiskPolicy
from lg.runner.agent_mcp import McpTools
from lg.runner.console import StepOutput
from lg.runner.step_vm import GUEST_OUTPUT_DIR, GUEST_OUTPUT_FILE, GUEST_WORKSPACE
from lg.runs.store import RunStore
from lg.security.profile import VmProfile
from lg.vm.api import ExecRequest, ExecResult, Vm

MAX_READ_BYTES = 256 * 1024
MAX_LISTED = 500
CALL_TIMEOUT = 600.0
"""Seconds one tool call may run (less when the step's own timeout is nearer)."""


@dataclass
class VmToolHost:
    """Grades and runs one agent step's tool calls. `vm` changes when the step resumes in a restored VM."""

    vm: Vm
    policy: RiskPolicy
    profile: VmProfile
    kernel: str | None
    env: Mapping[str, str]  # the step's environment: never the model's API key
    deadline: float  # time.monotonic() when the step's timeout runs out
    output: StepOutput
    store: RunStore
    run_id: str
    step_id: str
    mask: Callable[[str], str]
    mcp: McpTools | None = None  # when the step has MCP servers
    last_grade: dict[str, Any] = field(default_factory=dict)  # the last call's, for its gate's card
    last_diff: str | None = None

    # --- grading ---

    def grade(self, call: ToolCall) -> Verdict:
        self.last_diff = None
        if self.mcp is not None and self.mcp.offers(call.name):
            verdict = self.mcp.grade(call)
        else:
            assessment = self._assess(call)
            action: Action = "deny" if assessment.denied else "gate" if assessment.gate else "run"
            rules = tuple(match.rule_id for match in assessment.matches)
            verdict = Verdict(action, assessment.level.label, rules, assessment.to_json())
        self.last_grade = dict(verdict.grade)
        self.record("call.graded", {"id": call.call_id, "name": call.name, "arguments": _shown_args(call),
                                    "reason": call.reason, "level": verdict.level, "action": verdict.action,
                                    "rules": list(verdict.rules)})
        return verdict

    def _assess(self, call: ToolCall) -> Assessment:
        relaxations = self.profile.relaxations()
        if call.name == "shell":
            return grade_script(self.policy, str(call.arguments["command"]), relaxations)
        path = workspace_path(call.path)
        if call.name == "read_file":
            return grade_script(self.policy, f"cat -- {shlex.quote(path)}", relaxations)
        if call.name == "list_files":
            return grade_script(self.policy, f"find {shlex.quote(path)}", relaxations)
        return self._assess_write(path, str(call.arguments["content"]))

    def _assess_write(self, path: str, content: str) -> Assessment:
        """A write is graded as the change it makes to the workspace, content included (secrets, CI files)."""
        old = self._read(path, missing_ok=True)
        data = content.encode()
        change = FileChange(path, "created" if old is None else "modified", len(data),
                            hashlib.sha256(data).hexdigest(), 0o644)
        self.last_diff = "".join(difflib.unified_diff(
            (old or "").splitlines(keepends=True), content.splitlines(keepends=True),
            "/dev/null" if old is None else f"a/{path}", f"b/{path}"))
        return grade_effects(self.policy, [change], InlineContent({path: content}, {path: old} if old else {}))

    # --- running, in the VM ---

    def run(self, call: ToolCall) -> str:
        if self.mcp is not None and self.mcp.offers(call.name):
            return self.mcp.call(call)
        if call.name == "shell":
            return self._shell(str(call.arguments["command"]))
        path = workspace_path(call.path)
        if call.name == "read_file":
            text = self._read(path, missing_ok=False)
            return text or ""
        if call.name == "list_files":
            return self._list(path)
        return self._write(path, str(call.arguments["content"]))

    def _exec(self, argv: tuple[str, ...], stdin: bytes | None = None,
              on_output: Callable[[str, bytes], None] | None = None) -> tuple[ExecResult, bytes, bytes]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 1:
            raise ToolProblem("the step's timeout has run out")
        uid, gid = self.profile.uid_gid
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

        def collect(stream: str, chunk: bytes) -> None:
            chunks.setdefault(stream, []).append(chunk)
            if on_output is not None:
                on_output(stream, chunk)

        result = self.vm.exec(ExecRequest(
            argv=argv, env={"HOME": GUEST_WORKSPACE if uid else "/root", "USER": self.profile.user,
                            "LG_OUTPUT": f"{GUEST_OUTPUT_DIR}/{GUEST_OUTPUT_FILE}", **self.env},
            cwd=GUEST_WORKSPACE, timeout=min(CALL_TIMEOUT, remaining), uid=uid, gid=gid, stdin=stdin,
            confine=self.profile.confinement(self.kernel), mkdirs=(GUEST_OUTPUT_DIR,)), on_output=collect)
        return result, b"".join(chunks["stdout"]), b"".join(chunks["stderr"])

    def _shell(self, command: str) -> str:
        result, stdout, stderr = self._exec(("/bin/sh", "-c", command), on_output=self.output)
        self.output.flush()
        status = "timed out" if result.timed_out else (
            f"killed by signal {result.signal}" if result.signal else f"exit code {result.exit_code}")
        text = f"{status}\n"
        if stdout:
            text += f"--- stdout ---\n{stdout.decode(errors='replace')}"
        if stderr:
            text += f"--- stderr ---\n{stderr.decode(errors='replace')}"
        return text

    def _read(self, path: str, *, missing_ok: bool) -> str | None:
        script = 'if [ -e "$1" ] || [ -L "$1" ]; then exec head -c "$2" -- "$1"; else exit 44; fi'
        result, stdout, stderr = self._exec(("/bin/sh", "-c", script, "sh", path, str(MAX_READ_BYTES + 1)))
        if result.exit_code == 44:
            if missing_ok:
                return None
            raise ToolProblem(f"{path}: no such file in the workspace")
        if not result.ok:
            raise ToolProblem(f"{path}: cannot read it: {stderr.decode(errors='replace').strip()}")
        if len(stdout) > MAX_READ_BYTES:
            return stdout[:MAX_READ_BYTES].decode(errors="replace") + f"\n[cut at {MAX_READ_BYTES} bytes]"
        return stdout.decode(errors="replace")

    def _list(self, path: str) -> str:
        script = ('[ -d "$1" ] || { echo "not a directory" >&2; exit 1; }; '
                  'find "$1" -mindepth 1 -name .git -prune -o -print | head -n "$2"')
        result, stdout, stderr = self._exec(("/bin/sh", "-c", script, "sh", path, str(MAX_LISTED + 1)))
        if not result.ok:
            raise ToolProblem(f"{path}: {stderr.decode(errors='replace').strip() or 'cannot list it'}")
        lines = stdout.decode(errors="replace").splitlines()
        cut = f"\n[only the first {MAX_LISTED} shown]" if len(lines) > MAX_LISTED else ""
        return "\n".join(line.removeprefix("./") for line in lines[:MAX_LISTED]) + cut

    def _write(self, path: str, content: str) -> str:
        if path == ".":
            raise ToolProblem("write_file needs the path of a file")
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'
        result, _, stderr = self._exec(("/bin/sh", "-c", script, "sh", path), stdin=content.encode())
        if not result.ok:
            raise ToolProblem(f"{path}: cannot write it: {stderr.decode(errors='replace').strip()}")
        return f"wrote {len(content.encode())} bytes to {path}"

    # --- the record ---

    def record(self, event: str, data: Mapping[str, Any]) -> None:
        """A transcript line in the step's log (masked), and an audit record for grades, decisions and results."""
        self.output.note(self.mask(_transcript_line(event, data)))
        if event in ("call.graded", "call.result", "call.refused", "model", "call.decided", "mcp.tools"):
            self.store.audit(f"agent.{event}", self.run_id, step=self.step_id,
                             **{key: _audited(value, self.mask) for key, value in data.items()})


def _shown_args(call: ToolCall) -> dict[str, Any]:
    return {key: value for key, value in call.arguments.items() if key != "reason"}


def _transcript_line(event: str, data: Mapping[str, Any]) -> str:
    if event == "model":
        calls = ", ".join(str((c.get("function") or {}).get("name")) for c in data.get("tool_calls") or [])
        spent = data.get("spent") or {}
        said = str(data.get("content") or "").strip()
        return (f"agent turn {data.get('turn')}: {said[:2000] or '(no text)'}"
                + (f" -> calls {calls}" if calls else "")
                + f"  [{data.get('tokens_in')} in, {data.get('tokens_out')} out; "
                  f"step so far ${spent.get('usd', 0):.4f}]")
    if event == "call.graded":
        return (f"agent call {data.get('name')} {_short(data.get('arguments'))}: graded {data.get('level')} "
                f"-> {data.get('action')}" + (f" ({', '.join(data.get('rules') or [])})" if data.get("rules") else ""))
    if event == "call.result":
        return f"agent call {data.get('name')} result: {_short(data.get('result'), 2000)}"
    if event == "call.refused":
        return f"agent call {data.get('name')!r} refused: {data.get('error')}"
    return f"agent {event}: {_short(dict(data))}"


def _short(value: Any, limit: int = 500) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more]"


def _audited(value: Any, mask: Callable[[str], str]) -> Any:
    """Audit records keep the call in full but masked, and long texts cut (the transcript has them)."""
    if isinstance(value, str):
        return _short(mask(value), 4000)
    if isinstance(value, Mapping):
        return {str(key): _audited(item, mask) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_audited(item, mask) for item in value]
    return value
