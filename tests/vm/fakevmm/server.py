"""A real HTTP/1.1 server on a unix socket, threaded (one thread a connection), answering through an `Api`."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from pathlib import Path
from typing import Any, Protocol

from tests.vm.fakevmm.guest import listen_unix


class Api(Protocol):
    def handle(self, method: str, path: str, body: Any, raw: bytes) -> tuple[int, Any]:
        """(status, JSON body or None) for one request."""
        ...


class UnixHttpServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, api: Api) -> None:
        self.api = api
        super().__init__(str(path), _Handler, bind_and_activate=False)
        self.socket = listen_unix(path)

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


class _Handler(http.server.BaseHTTPRequestHandler):
    server: UnixHttpServer
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = _NotJson(raw)
        status, answer = self.server.api.handle(self.command, self.path, body, raw)
        text = isinstance(answer, str)
        data = answer.encode() if text else json.dumps(answer).encode() if answer is not None else b""
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _answer  # noqa: N815 - http.server's names


class _NotJson:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __repr__(self) -> str:
        return f"<not JSON: {self.raw[:40]!r}>"
