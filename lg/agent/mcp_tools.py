"""MCP tools over Streamable HTTP: list a server's tools and call one, synchronously, with a deadline.

These calls are made by lg on the host, never from inside a step's VM: the VM never learns a server's URL.
The `mcp` SDK (2.x, the optional extra `lg[agent]`) is async and heavy, so it is imported only here, on use,
and each call runs the SDK in a fresh event loop on its own thread: the caller is sync code on a step thread,
which may or may not already run a loop. Whatever goes wrong with the server (down, too slow, not speaking
MCP, answering with an error) becomes an McpServerError naming the server, never a traceback.

A connection lasts one operation: `list_tools` and `call_tool` each open a session, initialise it, do their one
request and close it. A tool call is rare next to the model's turns, and no session state can then leak from
one call into the next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from lg.errors import EnvironmentUnfit, LgError

if TYPE_CHECKING:
    from mcp import ClientSession

T = TypeVar("T")

MAX_RESULT_CHARS = 1_000_000  # what a tool result may put into the conversation; the rest is cut, and said so
# One answer the SDK will read (its default is 1 MiB per server-sent event): above the result cap with room for
# JSON's escapes, so a long result is cut by lg, and says so, rather than failing.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_TOOL_PAGES = 100  # tools/list pages followed: a server whose cursor never ends is not listed for ever
# After the deadline, the SDK's own cancellation gets this long to unwind before the caller stops waiting for it.
CANCEL_GRACE = 2.0


@dataclass(frozen=True)
class McpServer:
    name: str  # as the pipeline names it: what errors, grades and records say
    url: str  # the Streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str
    description: str
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    # As the server sent them, with MCP's wire names (destructiveHint, readOnlyHint...). Hints from the server:
    # they may raise a grade, never lower one (lg.policy.mcp_grade).
    annotations: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class McpResult:
    text: str  # every content block as text, in order
    is_error: bool  # the tool reported a failure (the model sees it and may try again)


class McpServerError(LgError):
    """An MCP server could not be used: down, too slow, not speaking MCP, or answering with an error."""

    def __init__(self, message: str, server: str = "") -> None:
        super().__init__(message)
        self.server = server


def list_tools(server: McpServer, timeout: float) -> list[McpTool]:
    """The tools `server` offers, all pages of them, within `timeout` seconds."""
    async def operation(session: ClientSession) -> list[McpTool]:
        return [_tool(server, raw) for raw in await _all_tools(session)]

    return _run(server, "listing its tools", timeout, operation)


def call_tool(server: McpServer, tool: str, arguments: Mapping[str, Any], timeout: float) -> McpResult:
    """Call `tool` with `arguments` (a JSON object) on `server`, within `timeout` seconds."""
    payload = _json_object(server, tool, arguments)

    async def operation(session: ClientSession) -> McpResult:
        return _result(await session.call_tool(tool, payload))

    return _run(server, f"calling {tool!r}", timeout, operation)


# --- the SDK, on its own loop ----------------------------------------------------------------------------


def _run(server: McpServer, doing: str, timeout: float, operation: Callable[[ClientSession], Awaitable[T]]) -> T:
    """Run `operation` in a session with `server` on a fresh loop in a thread; wait at most `timeout` (plus a
    grace for the SDK to unwind). A thread the SDK does not give back in time is left behind as a daemon."""
    if not (timeout > 0 and math.isfinite(timeout)):
        raise McpServerError(f"MCP server {server.name!r}: timeout must be a positive number of seconds, "
                             f"not {timeout!r}", server.name)
    _require_sdk()
    _quiet_sdk_logs()
    outcome: dict[str, Any] = {}

    def work() -> None:
        import anyio  # noqa: PLC0415 - the SDK's async library, a dependency of the optional extra

        try:
            outcome["value"] = anyio.run(_session, server, timeout, operation)
        except BaseException as error:  # exception groups included: every failure is described below
            outcome["error"] = error

    thread = threading.Thread(target=work, name=f"mcp-{server.name}", daemon=True)
    thread.start()
    thread.join(timeout + CANCEL_GRACE)
    if thread.is_alive() or not outcome:
        raise McpServerError(_message(server, doing, f"no answer within {timeout:g} s"), server.name)
    if "error" in outcome:
        raise McpServerError(_message(server, doing, _describe(outcome["error"], timeout)), server.name) from None
    return outcome["value"]  # type: ignore[no-any-return]


def _require_sdk() -> None:
    """Here, in the caller's thread, so a missing extra is said as such, not as a failure of the server."""
    try:
        import mcp  # noqa: F401, PLC0415 - imported for what it tells: the optional extra is installed
    except ImportError:
        raise EnvironmentUnfit("agent steps with MCP tools need the MCP SDK, which is not installed",
                               fix="pip install 'luminaguard[agent]'") from None


def _quiet_sdk_logs() -> None:
    """The SDK logs the failures it then raises, tracebacks included; lg configures no logging, so Python's
    last-resort handler would print them. lg reports each failure once, as an McpServerError."""
    for name in ("mcp", "httpx2"):
        logger = logging.getLogger(name)
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())


async def _session(server: McpServer, timeout: float, operation: Callable[[ClientSession], Awaitable[T]]) -> T:
    import anyio  # noqa: PLC0415
    from mcp import ClientSession  # noqa: PLC0415 - heavy, and only in the optional extra
    from mcp.client.streamable_http import streamable_http_client  # noqa: PLC0415

    with anyio.fail_after(timeout):
        async with (streamable_http_client(server.url, max_sse_event_size=MAX_ANSWER_BYTES) as (read, write),
                    ClientSession(read, write) as session):
            await session.initialize()
            return await operation(session)


async def _all_tools(session: ClientSession) -> list[Any]:
    from mcp.types import PaginatedRequestParams  # noqa: PLC0415

    page = await session.list_tools()
    tools = list(page.tools)
    for _ in range(MAX_TOOL_PAGES - 1):
        if not page.next_cursor:
            return tools
        page = await session.list_tools(params=PaginatedRequestParams(cursor=page.next_cursor))
        tools.extend(page.tools)
    if page.next_cursor:
        raise _NotMcp(f"its tool list goes on past {MAX_TOOL_PAGES} pages")
    return tools


class _NotMcp(Exception):
    """The server answered, but not as an MCP server should."""


# --- from the SDK's types to lg's ------------------------------------------------------------------------


def _tool(server: McpServer, raw: Any) -> McpTool:
    annotations = raw.annotations.model_dump(by_alias=True, exclude_none=True) if raw.annotations else {}
    return McpTool(server=server.name, name=raw.name, description=raw.description or "",
                   input_schema=dict(raw.input_schema), annotations=annotations)


def _result(raw: Any) -> McpResult:
    from mcp.types import CallToolResult  # noqa: PLC0415

    if not isinstance(raw, CallToolResult):  # e.g. a task or input request this client never asked for
        raise _NotMcp(f"answered a tool call with a {type(raw).__name__}, not a result")
    parts = [_block_text(block) for block in raw.content]
    if not parts and raw.structured_content is not None:
        parts.append(json.dumps(raw.structured_content, ensure_ascii=False))
    return McpResult(text=_capped("\n".join(parts)), is_error=bool(raw.is_error))


def _block_text(block: Any) -> str:
    """Text as it is; anything else by what it is, so the model knows something came back that it cannot see."""
    kind = getattr(block, "type", "unknown")
    if kind == "text":
        return str(block.text)
    if kind == "resource":
        inner = block.resource
        text = getattr(inner, "text", None)
        return str(text) if text is not None else f"[resource {inner.uri} ({inner.mime_type or 'binary'})]"
    if kind == "resource_link":
        return f"[resource link {block.uri}]"
    mime = getattr(block, "mime_type", None)
    return f"[{kind} content{f' ({mime})' if mime else ''} not shown]"


def _capped(text: str) -> str:
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return f"{text[:MAX_RESULT_CHARS]}\n[... cut by lg: {len(text) - MAX_RESULT_CHARS} more characters]"


def _json_object(server: McpServer, tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as plain JSON (what goes on the wire); anything else is refused before connecting."""
    if not isinstance(arguments, Mapping):
        raise McpServerError(f"MCP server {server.name!r}: arguments for {tool!r} must be a JSON object, "
                             f"not {type(arguments).__name__}", server.name)
    try:
        payload: dict[str, Any] = json.loads(json.dumps(arguments, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise McpServerError(f"MCP server {server.name!r}: arguments for {tool!r} are not JSON: {error}",
                             server.name) from None
    return payload


# --- what went wrong, in words ---------------------------------------------------------------------------


def _message(server: McpServer, doing: str, problem: str) -> str:
    return f"MCP server {server.name!r} ({shown_url(server.url)}), {doing}: {problem}"


def shown_url(url: str) -> str:
    """The URL for messages and records: without user:password@ and without the query, where a token may be."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "an unreadable URL"
    if not parts.scheme or not host:
        return url if "@" not in url and "?" not in url else "an unreadable URL"
    netloc = f"[{host}]" if ":" in host else host
    suffix = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{f':{port}' if port else ''}{parts.path}{suffix}"


def _describe(error: BaseException, timeout: float) -> str:
    """Down, slow, garbage or an error answer: the innermost cause, named for a person."""
    import httpx2  # noqa: PLC0415 - the SDK's HTTP client
    from mcp import MCPError  # noqa: PLC0415
    from pydantic import ValidationError  # noqa: PLC0415

    error = _innermost(error)
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(error, httpx2.ConnectError | httpx2.ConnectTimeout):
        return f"cannot connect (is it running?): {_text(error)}"
    if isinstance(error, httpx2.HTTPStatusError):
        return f"answered HTTP {error.response.status_code}, not MCP"
    if isinstance(error, httpx2.TransportError):
        return f"the connection failed: {_text(error)}"
    if isinstance(error, MCPError):
        return f"answered with an error: {_short(error.error.message)} (code {error.code})"
    if isinstance(error, ValidationError | ValueError | _NotMcp | KeyError | TypeError):
        return f"did not answer as an MCP server: {_text(error)}"
    return f"failed: {type(error).__name__}: {_text(error)}"


def _innermost(error: BaseException) -> BaseException:
    """The SDK runs in task groups: a failure arrives wrapped in exception groups, perhaps beside the
    cancellations it caused. The first failure that is not a cancellation is the one to report."""
    while isinstance(error, BaseExceptionGroup):
        leaves = list(error.exceptions)
        error = next((leaf for leaf in leaves if not _is_cancellation(leaf)), leaves[0])
    return error


def _is_cancellation(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError) or (
        isinstance(error, BaseExceptionGroup) and all(_is_cancellation(leaf) for leaf in error.exceptions))


def _text(error: BaseException) -> str:
    return _short(str(error)) or type(error).__name__


def _short(text: str) -> str:
    """On one line, and short: a server's error may be a page of validation errors, or a whole HTML page."""
    flat = " ".join(text.split())
    return flat if len(flat) <= 300 else f"{flat[:300]}..."
