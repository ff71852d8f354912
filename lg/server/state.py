"""The server's view of the state store: one RunStore (one SQLite or PostgreSQL connection) per worker thread.

A connection serves one transaction at a time, and Starlette runs blocking work in a pool of threads, so each
thread opens its own on first use. Writers still queue on the store's write lock (SQLite's BEGIN IMMEDIATE,
PostgreSQL's advisory lock: lg.runs.dialect), which is what makes concurrent decisions produce exactly one
transition.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from lg.runs.gates import GateStore
from lg.runs.store import RunStore
from lg.runs.tokens import TokenStore


@dataclass(frozen=True)
class ServerConfig:
    state_dir: Path
    blobs: Path | None = None  # the blob store (issue #17 item 2); None: the state directory's blobs/
    secure_cookies: bool = False  # served over TLS: cookies get the Secure attribute
    max_body: int = 64 * 1024
    max_blob: int = 256 * 1024 * 1024  # one uploaded blob (a held file, a step's log)
    state_url: str | None = None  # the PostgreSQL store (state_dir then keeps only local files)

    @property
    def blob_dir(self) -> Path:
        return self.blobs if self.blobs is not None else self.state_dir / "blobs"


@dataclass(frozen=True)
class Cached:
    """An encoded answer, good while the audit log's newest record is `version` and until `until` (the first
    open gate's expiry)."""

    version: int
    until: float
    body: bytes


@dataclass
class Stores:
    """The stores of the calling thread, and answers cached across threads."""

    state_dir: Path
    state_url: str | None = None
    _local: threading.local = field(default_factory=threading.local)
    cache: dict[str, Cached] = field(default_factory=dict)

    def version(self) -> int:
        """The sequence number of the newest audit record. Every change of a run, step, gate or decision appends
        one in its own transaction (lg.runs.store), so an answer built at this version is current as long as
        the number has not moved."""
        row = self.runs().connection.execute("SELECT seq FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return int(row[0]) if row is not None else 0

    def runs(self) -> RunStore:
        store: RunStore | None = getattr(self._local, "store", None)
        if store is None:
            store = RunStore(self.state_dir, self.state_url)
            self._local.store = store
        return store

    def gates(self) -> GateStore:
        return GateStore(self.runs())

    def tokens(self) -> TokenStore:
        return TokenStore(self.runs())
