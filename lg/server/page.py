"""The approval page: log in with an API token, see every pending gate with its whole diff card, approve or
reject with a comment or reason. Plain HTML forms (no JavaScript); each POST carries the session's CSRF token
and is refused without it; decisions go through the same checks as the API's (lg.server.api.record_decision).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from lg.runs.tokens import Permission, Token
from lg.server.auth import LOGIN_COOKIE, SESSION_COOKIE, SESSION_SECONDS, Session, Sessions, same
from lg.server.body import read_body
from lg.server.call import Call, find_gate, find_run
from lg.server.decisions import decision_request, record_decision
from lg.server.errors import ApiError
from lg.server.metrics import Metrics
from lg.server.reads import gate_detail, pending_gates
from lg.server.state import ServerConfig, Stores
from lg.server.templates import CSS, environment

# No script may run, no frame may hold the page, forms post only here: the page needs nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Viewer:
    session: Session
    token: Token


class Page:
    def __init__(self, config: ServerConfig, stores: Stores, sessions: Sessions, metrics: Metrics) -> None:
        self.config, self.stores, self.sessions, self.metrics = config, stores, sessions, metrics
        self.env = environment()

    # --- routes ---------------------------------------------------------------------------------------------

    async def css(self, request: Request) -> Response:
        return Response(CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    async def index(self, request: Request) -> Response:
        viewer = await run_in_threadpool(self._viewer, request)
        if viewer is None:
            return self._login_page()
        gates = await run_in_threadpool(self._pending, viewer)
        return self._html("queue", viewer, gates=gates, title="pending gates")

    async def gate(self, request: Request) -> Response:
        viewer = await run_in_threadpool(self._viewer, request)
        if viewer is None:
            return self._login_page()
        try:
            detail = await run_in_threadpool(self._gate, viewer, request.path_params)
        except ApiError as error:
            return self._html("queue", viewer, gates=[], title="error", error=error, status=error.status)
        return self._html("gate", viewer, gate=detail, title=f"gate {detail['gate']}")

    async def login(self, request: Request) -> Response:
        try:
            form = await self._form(request)
        except ApiError as error:
            return self._login_page(error)
        if not same(form.get("login_csrf"), request.cookies.get(LOGIN_COOKIE)):
            return self._login_page(ApiError(403, "csrf", "the login form expired or came from another site; "
                                                          "try again"))
        given = form.get("token", "")
        token = await run_in_threadpool(lambda: self.stores.tokens().authenticate(given))
        if token is None:
            return self._login_page(ApiError(401, "invalid_token", "not a valid API token (malformed, unknown or "
                                                                   "revoked)"))
        session = self.sessions.start(token)
        response = RedirectResponse("/", status_code=303)
        self._cookie(response, SESSION_COOKIE, session.id, SESSION_SECONDS)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        viewer = await run_in_threadpool(self._viewer, request)
        try:
            form = await self._form(request)
        except ApiError:
            form = {}
        if viewer is not None and same(form.get("csrf"), viewer.session.csrf):
            self.sessions.end(viewer.session.id)
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def decide(self, request: Request) -> Response:
        viewer = await run_in_threadpool(self._viewer, request)
        if viewer is None:
            return self._login_page(ApiError(401, "not_logged_in", "log in to decide gates"))
        run_id, gate_id = request.path_params["run"], request.path_params["gate"]
        try:
            form = await self._form(request)
            self._check_post(request, viewer, form)
            wanted = decision_request({key: form[key] for key in ("verdict", "digest", "comment") if key in form})
            await run_in_threadpool(self._decide, viewer, run_id, gate_id, wanted)
        except ApiError as error:
            self.metrics.decisions.labels(error.code).inc()
            try:
                detail = await run_in_threadpool(self._gate, viewer, request.path_params)
            except ApiError:
                return self._html("queue", viewer, gates=[], title="error", error=error, status=error.status)
            return self._html("gate", viewer, gate=detail, title="refused", error=error, status=error.status)
        self.metrics.decisions.labels("recorded").inc()
        return RedirectResponse(f"/runs/{run_id}/gates/{gate_id}", status_code=303)

    # --- work in a worker thread ---------------------------------------------------------------------------------

    def _viewer(self, request: Request) -> Viewer | None:
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:
            return None
        token = self.stores.tokens().live(session.token_id)
        if token is None:  # revoked since: the session ends with it
            self.sessions.end(session.id)
            return None
        return Viewer(session, token)

    def _call(self, viewer: Viewer, params: dict[str, Any] | None = None) -> Call:
        return Call(self.stores, self.config, viewer.token, params or {})

    def _pending(self, viewer: Viewer) -> list[dict[str, Any]]:
        call = self._call(viewer)
        rows = pending_gates(call)
        return [self._gate(viewer, {"run": row["run"], "gate": row["gate"]}) for row in rows]

    def _gate(self, viewer: Viewer, params: dict[str, Any]) -> dict[str, Any]:
        call = self._call(viewer, params)
        record = find_run(call.store, params["run"])
        return gate_detail(call, record, find_gate(call, record, params["gate"]))

    def _decide(self, viewer: Viewer, run_id: str, gate_id: str, wanted: Any) -> None:
        record_decision(self._call(viewer), run_id, gate_id, wanted, viewer.token.name)

    # --- helpers -------------------------------------------------------------------------------------------------

    def _check_post(self, request: Request, viewer: Viewer, form: dict[str, str]) -> None:
        if not same(form.get("csrf"), viewer.session.csrf):
            raise ApiError(403, "csrf", "the form's CSRF token is missing or wrong (an old page, or a form posted "
                                        "from another site); reload the page and decide again")
        origin = request.headers.get("origin")
        if origin and origin != "null" and urllib.parse.urlsplit(origin).netloc != request.headers.get("host"):
            raise ApiError(403, "csrf", f"a form posted from another origin ({origin}) is refused")
        if not viewer.token.may(Permission.DECIDE):
            raise ApiError(403, "missing_role", f"your token's role ({viewer.token.role.value}) may not decide gates")

    async def _form(self, request: Request) -> dict[str, str]:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise ApiError(415, "unsupported_media_type", "the page posts application/x-www-form-urlencoded forms")
        raw = await read_body(request, self.config.max_body)
        try:
            fields = urllib.parse.parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError) as error:
            raise ApiError(400, "malformed_form", f"the form could not be read: {error}") from None
        return {key: values[0] for key, values in fields.items()}

    def _html(self, template: str, viewer: Viewer | None, status: int = 200, **values: Any) -> HTMLResponse:
        text = self.env.get_template(template).render(
            who=viewer.token if viewer else None, csrf=viewer.session.csrf if viewer else "",
            can_decide=bool(viewer and viewer.token.may(Permission.DECIDE)), **values)
        return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)

    def _login_page(self, error: ApiError | None = None) -> HTMLResponse:
        import secrets  # noqa: PLC0415

        login_csrf = secrets.token_urlsafe(24)
        response = self._html("login", None, status=error.status if error else 200, error=error,
                              login_csrf=login_csrf, title="log in")
        self._cookie(response, LOGIN_COOKIE, login_csrf, 3600)
        return response

    def _cookie(self, response: Response, name: str, value: str, seconds: int) -> None:
        response.set_cookie(name, value, max_age=seconds, path="/", httponly=True, samesite="strict",
                            secure=self.config.secure_cookies)
