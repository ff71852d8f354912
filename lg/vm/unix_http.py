"""HTTP/1.1 over a unix socket, for the VMM APIs that speak it (Firecracker, Cloud Hypervisor).

The standard library's http.client does all of HTTP; only its connect() changes (lg.vm.channel.connect_unix,
which also reaches a socket whose path is longer than sun_path allows). One connection per request: a few
requests per VM lifetime do not warrant keeping one open, and a VMM that died then fails the next request
at connect() instead of half-way through a reused one.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.vm.api import VmError
from lg.vm.channel import connect_unix

API_TIMEOUT = 60.0  # seconds for one request (a snapshot of a large guest writes its whole memory)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = connect_unix(self.socket_path)
        sock.settimeout(self.timeout)
        self.sock = sock


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any  # the JSON document, or None (no body, or not JSON)
    text: str


class ApiError(VmError):
    """The VMM refused a request, or its API could not be reached."""

    def __init__(self, message: str, status: int | None = None, fault: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.fault = fault


FaultReader = Callable[[ApiResponse], str]
"""How a VMM's error body reads: the document each API publishes says (Firecracker: {"fault_message": ...})."""


def plain_fault(response: ApiResponse) -> str:
    return response.text.strip()[:500]


class ApiClient:
    """Requests to one VMM's API socket. `base` prefixes every path (Cloud Hypervisor's /api/v1)."""

    def __init__(self, socket_path: Path, base: str = "", fault: FaultReader = plain_fault,
                 timeout: float = API_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.base = base
        self.fault = fault
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> ApiResponse:
        """The answer to one request; ApiError unless its status is 2xx."""
        connection = UnixHTTPConnection(self.socket_path, self.timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self.base + path, body=data, headers=headers)
            raw = connection.getresponse()
            text = raw.read().decode(errors="replace")
        except (OSError, http.client.HTTPException) as problem:
            raise ApiError(f"{method} {path}: the VMM's API did not answer ({problem})") from problem
        finally:
            connection.close()
        response = ApiResponse(raw.status, _json_or_none(text), text)
        if not 200 <= raw.status < 300:
            fault = self.fault(response)
            raise ApiError(f"{method} {path} refused ({raw.status} {raw.reason}): {fault or 'no reason given'}",
                           raw.status, fault)
        return response

    def wait_listening(self, deadline: float, alive: Callable[[], None]) -> None:
        """Until the VMM accepts connections on its API socket (it creates it as it starts)."""
        while True:
            alive()
            try:
                connect_unix(self.socket_path).close()
                return
            except (TimeoutError, FileNotFoundError, ConnectionRefusedError) as problem:
                if time.monotonic() >= deadline:
                    raise ApiError(f"the VMM never opened its API socket {self.socket_path}: {problem}") from None
            time.sleep(0.01)


def _json_or_none(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
