"""API tokens for `lg serve`: who calls the server, and with which role.

A token is `lgt_<id>_<secret>`: the id is public (listed by `lg token ls`, named by `lg token revoke`), the
secret is 32 random bytes shown once, when the token is made. Only the SHA-256 of the secret is stored: a copy
of the database gives no usable token, and because the secret has 256 bits of entropy a plain hash is enough
(no slow password hash is needed). A presented token is found by its id and its secret's hash compared in
constant time. Creating and revoking a token are audited, in the transaction that does it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from lg.errors import InvalidInput
from lg.runs.gates import GateDatabase


class Role(StrEnum):
    VIEWER = "viewer"  # reads runs, steps, logs, gates, cards, the audit log
    APPROVER = "approver"  # and decides gates
    RUNNER = "runner"  # and claims runs to resume them, downloads held effects
    ADMIN = "admin"  # everything


class Permission(StrEnum):
    READ = "read"
    DECIDE = "decide"
    RUN = "run"
    ADMIN = "admin"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.APPROVER: frozenset({Permission.READ, Permission.DECIDE}),
    Role.RUNNER: frozenset({Permission.READ, Permission.RUN}),
    Role.ADMIN: frozenset(Permission),
}

PREFIX = "lgt_"
_SHAPE = re.compile(r"lgt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


@dataclass(frozen=True)
class Token:
    id: str
    name: str  # the identity decisions are recorded under (compared with a run's initiator for self-approval)
    role: Role
    created: int
    created_by: str
    revoked: int | None

    def may(self, permission: Permission) -> bool:
        return self.revoked is None and permission in GRANTS[self.role]

    def __repr__(self) -> str:  # never the secret: it is not even here
        return f"Token(id={self.id!r}, name={self.name!r}, role={self.role.value!r})"


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_role(text: str) -> Role:
    try:
        return Role(text)
    except ValueError:
        raise InvalidInput(f"--role {text!r}: one of {', '.join(role.value for role in Role)}") from None


class TokenStore:
    """Tokens in the state database, through the run store's connection and transactions."""

    def __init__(self, store: GateDatabase) -> None:
        self.store = store
        self._db = store.connection

    def create(self, name: str, role: Role, by: str) -> tuple[Token, str]:
        """A new token and its text, which is never shown again."""
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"token name {name!r}: letters, digits and . _ @ + - (up to 128), as the identity "
                               "decisions are recorded under (e.g. alice@example.com)")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = int(time.time())
        with self.store.transaction() as db:
            db.execute("INSERT INTO tokens (id, name, role, secret_sha256, created, created_by)"
                       " VALUES (?, ?, ?, ?, ?, ?)", (token_id, name, role.value, _secret_hash(secret), now, by))
            self.store.audit("token.created", None, token=token_id, name=name, role=role.value, by=by)
        return Token(token_id, name, role, now, by, None), f"{PREFIX}{token_id}_{secret}"

    def tokens(self) -> list[Token]:
        rows = self._db.execute("SELECT id, name, role, created, created_by, revoked FROM tokens ORDER BY created")
        return [_token(row) for row in rows]

    def revoke(self, which: str, by: str) -> list[Token]:
        """Revoke the token with this id, or every live token with this name."""
        with self.store.transaction() as db:
            live = [token for token in self.tokens() if token.revoked is None and which in (token.id, token.name)]
            if not live:
                raise InvalidInput(f"no live token with id or name {which!r} (see `lg token ls`)")
            now = int(time.time())
            for token in live:
                db.execute("UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, token.id))
                self.store.audit("token.revoked", None, token=token.id, name=token.name, by=by)
        return live

    def live(self, token_id: str) -> Token | None:
        """The token with this id unless it was revoked (a page session is re-checked on every request)."""
        row = self._db.execute("SELECT id, name, role, created, created_by, revoked FROM tokens WHERE id = ?",
                               (token_id,)).fetchone()
        token = _token(row) if row is not None else None
        return token if token is not None and token.revoked is None else None

    def authenticate(self, text: str) -> Token | None:
        """The live token this text is, or None (malformed, unknown, wrong secret, revoked: all alike)."""
        found = _SHAPE.fullmatch(text.strip())
        if found is None:
            return None
        token_id, secret = found.groups()
        row = self._db.execute("SELECT id, name, role, created, created_by, revoked, secret_sha256 FROM tokens"
                               " WHERE id = ?", (token_id,)).fetchone()
        # Compared even when no row was found, against a hash no secret has, so both cases take the same time.
        stored = row[6] if row is not None else "0" * 64
        if not hmac.compare_digest(stored, _secret_hash(secret)) or row is None:
            return None
        token = _token(row)
        return token if token.revoked is None else None


def _token(row: Iterable[object]) -> Token:
    token_id, name, role, created, created_by, revoked, *_ = tuple(row)
    return Token(str(token_id), str(name), Role(str(role)), int(str(created)), str(created_by),
                 int(str(revoked)) if revoked is not None else None)
