"""The MCP client against a real MCP server (the SDK's, over Streamable HTTP), and against servers that are down,
slow, or answer with garbage: every failure is an McpServerError naming the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from lg.agent.mcp_tools import MAX_RESULT_CHARS, McpServer, McpServerError, call_tool, list_tools, shown_url
from lg.errors import EnvironmentUnfit, ExitCode, LgError
from tests.mcp.servers import closed_port, garbage_server, serving, tool_server


@pytest.fixture(scope="module")
def tools_url() -> Iterator[str]:
    with serving(tool_server()) as base:
        yield f"{base}/mcp"


@pytest.fixture(scope="module")
def garbage_base() -> Iterator[str]:
    with serving(garbage_server()) as base:
        yield base


def test_lists_tools_with_schemas_and_annotations(tools_url: str) -> None:
    tools = {tool.name: tool for tool in list_tools(McpServer("issues", tools_url), timeout=10)}
    assert {"echo", "delete_issue", "slow", "broken", "mixed", "flood"} <= set(tools)
    delete = tools["delete_issue"]
    assert delete.server == "issues"
    assert delete.description == "Delete an issue for ever."
    assert delete.annotations == {"destructiveHint": True}
    assert delete.input_schema["properties"]["number"]["type"] == "integer"
    assert tools["echo"].annotations == {"readOnlyHint": True}


def test_calls_a_tool(tools_url: str) -> None:
    result = call_tool(McpServer("issues", tools_url), "delete_issue", {"number": 7}, timeout=10)
    assert result.text == "deleted issue 7"
    assert not result.is_error


def test_a_failing_tool_is_a_result_the_model_sees(tools_url: str) -> None:
    result = call_tool(McpServer("issues", tools_url), "broken", {}, timeout=10)
    assert result.is_error
    assert "broken" in result.text


def test_bad_arguments_and_unknown_tools_are_tool_errors(tools_url: str) -> None:
    server = McpServer("issues", tools_url)
    assert call_tool(server, "delete_issue", {"number": "seven"}, timeout=10).is_error
    unknown = call_tool(server, "no_such_tool", {}, timeout=10)
    assert unknown.is_error and "no_such_tool" in unknown.text


def test_non_text_content_is_named_not_dropped(tools_url: str) -> None:
    result = call_tool(McpServer("issues", tools_url), "mixed", {}, timeout=10)
    assert result.text == "a chart:\n[image content (image/png) not shown]"


def test_a_huge_result_is_cut_and_says_so(tools_url: str) -> None:
    result = call_tool(McpServer("issues", tools_url), "flood", {"chars": MAX_RESULT_CHARS + 10}, timeout=30)
    assert result.text.startswith("x" * MAX_RESULT_CHARS)
    assert result.text.endswith("[... cut by lg: 10 more characters]")


def test_server_down_names_the_server() -> None:
    server = McpServer("tracker", f"http://127.0.0.1:{closed_port()}/mcp")
    with pytest.raises(McpServerError) as caught:
        list_tools(server, timeout=5)
    message = str(caught.value)
    assert "'tracker'" in message and "cannot connect" in message
    assert caught.value.server == "tracker"
    assert isinstance(caught.value, LgError) and caught.value.exit_code == ExitCode.FAILED


def test_slow_tool_times_out_and_names_the_server(tools_url: str) -> None:
    started = time.monotonic()
    with pytest.raises(McpServerError, match=r"'issues'.*calling 'slow': no answer within 0.5 s"):
        call_tool(McpServer("issues", tools_url), "slow", {"seconds": 5}, timeout=0.5)
    assert time.monotonic() - started < 3  # the deadline holds; the tool would take 5 s


@pytest.mark.parametrize(("path", "what"), [
    ("/html", "Unexpected content type: text/html"),
    ("/json", "Failed to parse JSON response"),
    ("/rpc", "did not answer as an MCP server"),
    ("/500", "Server returned an error response"),
    ("/nowhere", "Not Found"),
])
def test_garbage_answers_name_the_server(garbage_base: str, path: str, what: str) -> None:
    with pytest.raises(McpServerError) as caught:
        list_tools(McpServer("junk", f"{garbage_base}{path}"), timeout=5)
    message = str(caught.value)
    assert message.startswith(f"MCP server 'junk' ({garbage_base}{path}), listing its tools: ")
    assert what in message
    assert "\n" not in message and len(message) < 500  # one readable line, not a page of validation errors


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/mcp"])
def test_urls_that_are_not_http_are_errors(url: str) -> None:
    with pytest.raises(McpServerError, match="'odd'"):
        list_tools(McpServer("odd", url), timeout=5)


def test_arguments_that_are_not_a_json_object_are_refused_before_connecting() -> None:
    server = McpServer("tracker", f"http://127.0.0.1:{closed_port()}/mcp")
    with pytest.raises(McpServerError, match="must be a JSON object"):
        call_tool(server, "x", ["not", "a", "mapping"], timeout=5)  # type: ignore[arg-type]
    with pytest.raises(McpServerError, match="are not JSON"):
        call_tool(server, "x", {"when": object()}, timeout=5)
    with pytest.raises(McpServerError, match="are not JSON"):
        call_tool(server, "x", {"n": float("nan")}, timeout=5)


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan")])
def test_a_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(McpServerError, match="timeout must be a positive number"):
        list_tools(McpServer("t", "http://127.0.0.1:1/mcp"), timeout=timeout)


def test_works_from_a_thread_that_runs_an_event_loop(tools_url: str) -> None:
    """The caller may be sync code called from inside a running loop: the SDK gets a loop of its own."""
    import asyncio

    async def inside_a_loop() -> str:
        return call_tool(McpServer("issues", tools_url), "echo", {"text": "hi"}, timeout=10).text

    assert asyncio.run(inside_a_loop()) == "hi"


def test_leaves_no_threads_behind(tools_url: str) -> None:
    before = {thread.name for thread in threading.enumerate()}
    for _ in range(3):
        call_tool(McpServer("issues", tools_url), "echo", {"text": "again"}, timeout=10)
    after = {thread.name for thread in threading.enumerate()}
    assert not {name for name in after - before if name.startswith("mcp-")}


def test_errors_never_show_credentials_in_the_url() -> None:
    port = closed_port()
    server = McpServer("tracker", f"http://user:s3cret@127.0.0.1:{port}/mcp?token=abc123")
    with pytest.raises(McpServerError) as caught:
        list_tools(server, timeout=5)
    assert "s3cret" not in str(caught.value) and "abc123" not in str(caught.value)
    assert f"(http://127.0.0.1:{port}/mcp?...)" in str(caught.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
    ("http://a:b@[::1]:8080/x?k=v", "http://[::1]:8080/x?..."),
    ("not a url", "not a url"),
    ("x?token=1", "an unreadable URL"),
    ("http://h:99999/", "an unreadable URL"),
])
def test_shown_url(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_importing_the_module_does_not_import_the_sdk() -> None:
    """`lg --help` and `lg validate` stay fast: the SDK loads on the first call, not with lg.agent.mcp_tools."""
    import subprocess
    import sys

    code = ("import sys, lg.agent.mcp_tools, lg.policy.mcp_grade; "
            "print(sorted({'mcp', 'httpx2', 'anyio'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_without_the_agent_extra_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "mcp", None)  # what `import mcp` meets where the extra is not installed
    with pytest.raises(EnvironmentUnfit) as caught:
        list_tools(McpServer("tracker", "http://127.0.0.1:1/mcp"), timeout=5)
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert "luminaguard[agent]" in str(caught.value)


def test_step_threads_may_call_at_once(tools_url: str) -> None:
    """Steps run on threads of their own: each call has its own loop and session, so they do not interfere."""
    from concurrent.futures import ThreadPoolExecutor

    server = McpServer("issues", tools_url)
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda n: call_tool(server, "echo", {"text": f"t{n}"}, timeout=20).text, range(8)))
    assert texts == [f"t{n}" for n in range(8)]
