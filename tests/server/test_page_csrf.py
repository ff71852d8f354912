"""The page's forms without a browser: a POST without the session's CSRF token, with another site's Origin, or
from a viewer is refused and records nothing; logging in needs the login form's own token."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

from lg.runs.gates import GateStore
from lg.runs.tokens import Role
from tests.server.conftest import EXPLICIT_GATE, Project, Server

# Every URL below is the test's own server on 127.0.0.1 (http): S310's worry (file: URLs) does not arise.
# ruff: noqa: S310


class Browser:
    """Cookies kept, redirects followed, as a browser without JavaScript."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> tuple[int, str]:
        return self._open(urllib.request.Request(self.url + path))

    def post(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
        data = urllib.parse.urlencode(fields).encode()
        return self._open(urllib.request.Request(self.url + path, data=data, headers={
            "Content-Type": "application/x-www-form-urlencoded", **(headers or {})}))

    def _open(self, request: urllib.request.Request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=60) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def login(self, token: str) -> str:
        _, page = self.get("/")
        login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', page)
        assert login_csrf
        status, page = self.post("/login", {"token": token, "login_csrf": login_csrf.group(1)})
        assert status == 200 and "signed in as" in page, page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf
        return csrf.group(1)


def test_forms_need_the_session_s_csrf_token_and_the_role(project: Project, serve: Callable[..., Server]) -> None:
    run_id = project.pause(EXPLICIT_GATE)
    approver = project.token("approver@example.com", Role.APPROVER)
    viewer = project.token("viewer@example.com", Role.VIEWER)
    server = serve()
    gate = GateStore(project.store()).open_gates()[0]
    path = f"/runs/{run_id}/gates/{gate.gate_id}/decide"
    fields = {"verdict": "approve", "digest": gate.digest, "comment": "ok"}
    browser = Browser(server.url)
    # logging in without the login form's own token (a login forced by another site) is refused
    status, page = browser.post("/login", {"token": approver})
    assert status == 403 and "another site" in page
    csrf = browser.login(approver)
    before = project.snapshot()
    for given, headers, why in ((None, {}, "CSRF token is missing"), ("forged", {}, "CSRF token is missing"),
                                (csrf, {"Origin": "https://evil.example"}, "another origin")):
        status, page = browser.post(path, {**fields, **({"csrf": given} if given else {})}, headers)
        assert status == 403 and why in page, page
    assert project.snapshot() == before
    watcher = Browser(server.url)
    status, page = watcher.post(path, {**fields, "csrf": watcher.login(viewer)})
    assert status == 403 and "may not decide" in page
    assert "cannot decide gates" in watcher.get("/")[1]
    assert project.snapshot() == before
    status, page = browser.post(path, {**fields, "csrf": csrf})
    assert status == 200 and "approved by approver@example.com" in page


HOSTILE = """\
    name: hostile
    steps:
      - id: ship
        approve: {reason: "<b>look</b>"}
        run: "echo '<script>alert(1)</script>' \\u202e evil > out.txt"
"""


def test_run_content_is_escaped_and_hidden_characters_shown(project: Project, serve: Callable[..., Server]) -> None:
    project.pause(HOSTILE)
    server = serve()
    browser = Browser(server.url)
    browser.login(project.token("viewer@example.com", Role.VIEWER))
    page = browser.get("/")[1]
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>look</b>" not in page and "&lt;b&gt;look&lt;/b&gt;" in page
    assert "\u202e" not in page and "\\u202e" in page  # a bidirectional override shown, not obeyed
