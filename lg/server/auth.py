"""Who is calling: API tokens (Authorization: Bearer) for the API, sessions (an HttpOnly cookie) for the page.

The API takes only the Authorization header, never a cookie, so a page in a browser cannot be made to call it
with the user's credentials (no CSRF on the API). The page logs in with an API token once; the server then
keeps a session in memory: a random id in an HttpOnly, SameSite=Strict cookie, and a random CSRF token that
every form carries and every POST must give back. A session names its token, which is looked up again on each
request, so revoking the token ends its sessions at once. Sessions do not survive a restart of the server
(log in again).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from lg.runs.tokens import Permission, Token, TokenStore
from lg.server.errors import ApiError

SESSION_COOKIE = "lg_session"
LOGIN_COOKIE = "lg_login"  # the login form's own CSRF token (double submit): no logging in someone else's session
SESSION_SECONDS = 12 * 3600


def bearer_token(tokens: TokenStore, authorization: str | None) -> Token:
    """The live token in an `Authorization: Bearer` header, or 401."""
    if not authorization:
        raise ApiError(401, "missing_token", "this endpoint needs an API token: Authorization: Bearer <token> "
                                             "(lg token create NAME --role ROLE)")
    scheme, _, value = authorization.partition(" ")
    token = tokens.authenticate(value) if scheme.lower() == "bearer" else None
    if token is None:
        raise ApiError(401, "invalid_token", "the API token is not valid (malformed, unknown or revoked)")
    return token


def require(token: Token, permission: Permission | None) -> None:
    if permission is not None and not token.may(permission):
        raise ApiError(403, "missing_role", f"token {token.id} ({token.name}) has role {token.role.value}, which may "
                                            f"not {permission.value}")


@dataclass(frozen=True)
class Session:
    id: str
    token_id: str
    csrf: str
    expires: float


class Sessions:
    """The page's logged-in sessions, in memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def start(self, token: Token) -> Session:
        session = Session(secrets.token_urlsafe(32), token.id, secrets.token_urlsafe(32),
                          time.time() + SESSION_SECONDS)
        with self._lock:
            now = time.time()
            self._sessions = {key: s for key, s in self._sessions.items() if s.expires > now}
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
        return session if session is not None and session.expires > time.time() else None

    def end(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)


def same(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two secrets, where a missing one never matches."""
    return bool(given) and bool(expected) and hmac.compare_digest(str(given), str(expected))
