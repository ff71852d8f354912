"""Real servers on 127.0.0.1 for the MCP client's tests: the SDK's own MCP server, and a plain web app that
answers with anything but MCP. Each runs under uvicorn on a free port in a thread, and is stopped at the end."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ImageContent, TextContent, ToolAnnotations
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` under uvicorn on a free 127.0.0.1 port; yields its base URL, and stops it on the way out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=1, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def tool_server() -> Any:
    """An MCP server with a few tools, one of them destructive by its own account."""
    server = MCPServer("lg-test-tools")

    @server.tool(description="Say the text back.", annotations=ToolAnnotations(read_only_hint=True))
    def echo(text: str) -> str:
        return text

    @server.tool(description="Delete an issue for ever.", annotations=ToolAnnotations(destructive_hint=True))
    def delete_issue(number: int) -> str:
        return f"deleted issue {number}"

    @server.tool(description="Take its time.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)  # the behaviour under test: a server slower than the caller's timeout
        return "finally"

    @server.tool(description="Always fails.")
    def broken() -> str:
        raise ValueError("the disk is on fire")

    @server.tool(description="Text and a picture.")
    def mixed() -> list[Any]:
        return [TextContent(type="text", text="a chart:"),
                ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png")]

    @server.tool(description="A lot of text.")
    def flood(chars: int) -> str:
        return "x" * chars

    return server.streamable_http_app()


def garbage_server() -> Starlette:
    """Web routes that answer an MCP client with an HTML page, JSON that is not JSON-RPC, JSON-RPC that is not an
    MCP result, and an HTTP error."""
    async def html(request: Request) -> Response:
        return HTMLResponse("<html><body>Welcome to nginx!</body></html>")

    async def json_page(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": 3})

    async def wrong_rpc(request: Request) -> Response:
        asked = await request.json() if request.method == "POST" else {}
        return JSONResponse({"jsonrpc": "2.0", "id": asked.get("id"),
                             "result": {"anything": "but an initialize result"}})

    async def failing(request: Request) -> Response:
        return Response("internal error", status_code=500)

    methods = ["GET", "POST", "DELETE"]
    return Starlette(routes=[Route("/html", html, methods=methods), Route("/json", json_page, methods=methods),
                             Route("/rpc", wrong_rpc, methods=methods), Route("/500", failing, methods=methods)])


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def main() -> None:
    """`python -m tests.mcp.servers`: the tool server in a process of its own (benchmarks/mcp_bench.py), its URL
    on the first line of stdout, until it is terminated."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    print(f"http://127.0.0.1:{listener.getsockname()[1]}/mcp", flush=True)
    uvicorn.Server(uvicorn.Config(tool_server(), log_level="error")).run(sockets=[listener])


if __name__ == "__main__":
    main()
