"""JSON calls to `lg serve`'s API, with its errors turned into lg's (the exit codes of the local commands).

The standard library's HTTP client: one short request per call, no connection pool to keep, and nothing to
import at `lg --help`. The server answers every refusal as {"error": {status, code, message}}; that message is
shown as it is, with the server's URL.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from lg.client.settings import ServerSettings
from lg.errors import EnvironmentUnfit, ExitCode, LgError

DEFAULT_TIMEOUT = 30.0


class ServerRefused(LgError):
    """The server answered with an error: its status, stable code and message."""

    def __init__(self, url: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{url}: {message} (HTTP {status}, {code})")
        self.status, self.code, self.server_message = status, code, message
        self.exit_code = _exit_code(status)


def _exit_code(status: int) -> ExitCode:
    if status == 409:  # a conflict: the gate or run moved on (decided, claimed, stale digest)
        return ExitCode.REJECTED
    if 400 <= status < 500:  # what was asked is wrong: unknown run, bad token, missing role, bad body
        return ExitCode.INVALID_INPUT
    return ExitCode.ENVIRONMENT  # the server cannot do it now (5xx, 503 unavailable)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ApiClient:
    """Calls to one server with one token."""

    def __init__(self, settings: ServerSettings, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.settings = settings
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=str(settings.ca_file)) if settings.ca_file else None

    @property
    def url(self) -> str:
        return self.settings.url

    def page_url(self, run_id: str, gate_id: str) -> str:
        """The approval page of a gate (what a paused run prints, and a CI notice links to)."""
        return f"{self.url}/runs/{quote(run_id)}/gates/{quote(gate_id)}"

    def get_json(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        return self._json(path, self.request("GET", path, query=query))

    def post_json(self, path: str, body: Any, query: Mapping[str, str] | None = None) -> Any:
        return self._json(path, self.request("POST", path, body=json.dumps(body).encode(), query=query,
                                             content_type="application/json"))

    def _json(self, path: str, answer: Response) -> Any:
        try:
            return answer.json()
        except ValueError:  # something else answers at that address (a proxy's page, another service)
            raise EnvironmentUnfit(f"{self.url}{path} did not answer JSON (HTTP {answer.status}): is `lg serve` "
                                   "there?", fix="check the URL (--server, LG_SERVER or lg.yaml server:)") from None

    def get_bytes(self, path: str) -> Response:
        return self.request("GET", path)

    def put_bytes(self, path: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
        return self.request("PUT", path, body=data, content_type=content_type).json()

    def request(self, method: str, path: str, *, body: bytes | None = None,
                query: Mapping[str, str] | None = None, content_type: str | None = None) -> Response:
        target = self.url + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self.settings.token}", "Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(target, data=body, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._context) as answer:  # noqa: S310
                return Response(answer.status, answer.read(), dict(answer.headers.items()))
        except urllib.error.HTTPError as error:
            raise self._refusal(error) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise EnvironmentUnfit(f"cannot reach lg serve at {self.url} ({reason})",
                                   fix="check the URL (--server, LG_SERVER or lg.yaml server:) and that "
                                       "`lg serve` runs there") from None

    def _refusal(self, error: urllib.error.HTTPError) -> LgError:
        raw = error.read()
        try:
            detail = json.loads(raw)["error"]
            return ServerRefused(self.url, error.code, str(detail["code"]), str(detail["message"]))
        except (ValueError, KeyError, TypeError):
            text = raw[:200].decode("utf-8", "replace").strip() or error.reason
            return ServerRefused(self.url, error.code, "http_error", f"HTTP {error.code}: {text}")

