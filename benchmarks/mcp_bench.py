"""What an agent step's MCP tool call costs lg, as JSON:

- list_tools_s / call_tool_s: median and p90 wall time of `lg.agent.mcp_tools.list_tools` and `call_tool` against
  the SDK's own MCP server (tests/mcp/servers.py) in a separate process on 127.0.0.1. Each call opens its own
  session (connect, initialize, the request, DELETE), on a fresh event loop in a thread of its own.
- grade_mcp_call_s: median time to grade one call against the shipped default policy (its MCP rules included).
- import_mcp_tools_s / mcp_imported: importing lg.agent.mcp_tools in a fresh interpreter, and whether that pulled in
  the SDK (it must not: the SDK loads on the first call).

Usage: python benchmarks/mcp_bench.py  (from the repository root)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lg.agent.mcp_tools import McpServer, McpServerError, call_tool, list_tools  # noqa: E402
from lg.policy.load import load_policy_file  # noqa: E402
from lg.policy.mcp_grade import grade_mcp_call  # noqa: E402

CALLS = 50
LISTS = 20
GRADES = 2000


def timed(function: Callable[[], Any], times: int) -> dict[str, float]:
    samples = []
    for _ in range(times):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return {"median": round(statistics.median(samples), 5), "p90": round(samples[int(len(samples) * 0.9)], 5),
            "max": round(samples[-1], 5), "n": times}


def import_cost() -> dict[str, Any]:
    code = ("import sys, time; t = time.perf_counter(); import lg.agent.mcp_tools; "
            "print(time.perf_counter() - t, 'mcp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    seconds, imported = out.split()
    return {"import_mcp_tools_s": round(float(seconds), 4), "mcp_imported": imported == "True"}


def main() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.mcp.servers"], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        server = McpServer("bench", process.stdout.readline().strip())
        for _ in range(50):  # until it answers
            try:
                list_tools(server, timeout=5)
                break
            except McpServerError:  # still starting
                time.sleep(0.1)
        call_tool(server, "echo", {"text": "warm"}, timeout=10)  # the SDK's first import and connection
        report = {
            "list_tools_s": timed(lambda: list_tools(server, timeout=10), LISTS),
            "call_tool_s": timed(lambda: call_tool(server, "echo", {"text": "hello"}, timeout=10), CALLS),
        }
    finally:
        process.terminate()
        process.wait(10)
    policy = load_policy_file(REPO / "profiles/risk/default.yaml")
    arguments = {"repo": "acme/api", "body": "a comment " * 50, "labels": ["bug", "p1"], "options": {"force": False}}
    grade = timed(lambda: grade_mcp_call(policy, "github", "create_issue_comment", arguments), GRADES)
    report["grade_mcp_call_s"] = grade
    report.update(import_cost())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
