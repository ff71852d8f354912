"""The step cache: directories a step declares in `cache:`, kept between runs in the project's state directory.

Before a step runs, the entry for its key is put into the VM's workspace; after it succeeds, a missing entry is
saved from the VM. Entries are immutable (a key that exists is not saved again) and content-addressed: each is a
tar file named by its sha256 under `cache/blobs/`, indexed in `cache/cache.db` (SQLite, so that parallel steps and
`lg cache` can share it) by key and scope.

The scope is the digest of the step's confinement and its guest image: an entry written by a step is restored only
under exactly the same VM profile and image, so a cache written under a looser profile can never reach a
stricter one (confinement is not ordered; the exact match is the safe subset). What a step changes inside its
cache paths is the cache's, never the workspace's: those changes are not effects and never reach the host.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lg.config.step_data import HASH_FILES_MARKER, deferred_patterns
from lg.errors import EnvironmentUnfit, InvalidInput
from lg.model import StepCacheLimits
from lg.runner.globs import select

CACHE_DIR = "cache"
CHUNK = 1 << 20
MIB = 1 << 20
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT NOT NULL,
    scope TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    paths TEXT NOT NULL,
    created REAL NOT NULL,
    used REAL NOT NULL,
    PRIMARY KEY (key, scope)
)
"""


@dataclass(frozen=True)
class CacheEntry:
    key: str
    scope: str
    blob: str  # sha256 of the tar file
    size: int
    paths: tuple[str, ...]
    created: float
    used: float

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "scope": self.scope, "blob": self.blob, "size": self.size,
                "paths": list(self.paths), "created": self.created, "used": self.used}


def cache_root(state_dir: Path) -> Path:
    return state_dir / CACHE_DIR


class StepCache:
    def __init__(self, root: Path, limits: StepCacheLimits | None = None) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.limits = limits or StepCacheLimits()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.blobs.mkdir(parents=True, exist_ok=True)
        try:
            with closing(sqlite3.connect(self.root / "cache.db", timeout=30)) as connection, connection:
                connection.execute(SCHEMA)
                yield connection
        except sqlite3.DatabaseError as error:
            raise EnvironmentUnfit(f"the step cache index {self.root / 'cache.db'} cannot be used: {error}",
                                   fix=f"remove {self.root} (it only holds caches) and run again") from error

    # --- one entry ---

    def lookup(self, key: str, scope: str) -> CacheEntry | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM entries WHERE key = ? AND scope = ?", (key, scope)).fetchone()
            if row is None:
                return None
            entry = _entry(row)
            if not (self.blobs / f"{entry.blob}.tar").is_file():
                db.execute("DELETE FROM entries WHERE key = ? AND scope = ?", (key, scope))
                return None
            db.execute("UPDATE entries SET used = ? WHERE key = ? AND scope = ?", (time.time(), key, scope))
            return entry

    def extract(self, entry: CacheEntry, destination: Path) -> None:
        """The entry's files under `destination`; tarfile's data filter refuses links and paths that leave it."""
        with tarfile.open(self.blobs / f"{entry.blob}.tar") as archive:
            archive.extractall(destination, filter="data")

    def save(self, key: str, scope: str, tree: Path, paths: tuple[str, ...]) -> CacheEntry | str:
        """Save `tree` (the fetched cache paths) under `key`; the entry, or why it was not saved."""
        limit = self.limits.max_entry_mib * MIB
        self.blobs.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.blobs, prefix=".new-", suffix=".tar", delete=False) as handle:
            temporary = Path(handle.name)
        try:
            _write_tar(tree, temporary)
            size = temporary.stat().st_size
            if size > limit:
                return f"not saved: {size / MIB:.1f} MiB is over step_cache.max_entry_mib ({limit // MIB})"
            blob = _sha256(temporary)
            temporary.replace(self.blobs / f"{blob}.tar")
        finally:
            temporary.unlink(missing_ok=True)
        now = time.time()
        entry = CacheEntry(key, scope, blob, size, paths, now, now)
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (key, scope, blob, size, "\n".join(paths), now, now))
        self.prune(self.limits.max_total_mib * MIB)
        return entry

    # --- the whole cache (lg cache) ---

    def entries(self) -> list[CacheEntry]:
        with self._db() as db:
            return [_entry(row) for row in db.execute("SELECT * FROM entries ORDER BY used DESC")]

    def remove(self, key: str | None) -> list[CacheEntry]:
        """Remove the entries of `key` (all scopes), or every entry when key is None."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM entries WHERE ? IS NULL OR key = ?", (key, key)).fetchall()
            db.execute("DELETE FROM entries WHERE ? IS NULL OR key = ?", (key, key))
        self._drop_unreferenced()
        return [_entry(row) for row in rows]

    def prune(self, max_total_bytes: int | None = None, older_than: float | None = None) -> list[CacheEntry]:
        """Remove entries unused for `older_than` seconds, then the least recently used past `max_total_bytes`."""
        removed: list[CacheEntry] = []
        with self._db() as db:
            entries = [_entry(row) for row in db.execute("SELECT * FROM entries ORDER BY used DESC")]
            total = 0
            for entry in entries:
                total += entry.size
                stale = older_than is not None and time.time() - entry.used > older_than
                if stale or (max_total_bytes is not None and total > max_total_bytes):
                    db.execute("DELETE FROM entries WHERE key = ? AND scope = ?", (entry.key, entry.scope))
                    removed.append(entry)
                    total -= entry.size
        self._drop_unreferenced()
        return removed

    def _drop_unreferenced(self) -> None:
        with self._db() as db:
            kept = {row[0] for row in db.execute("SELECT blob FROM entries")}
        for blob in self.blobs.glob("*.tar"):
            if blob.stem not in kept:
                blob.unlink(missing_ok=True)


def _entry(row: tuple[object, ...]) -> CacheEntry:
    key, scope, blob, size, paths, created, used = row
    return CacheEntry(str(key), str(scope), str(blob), int(str(size)), tuple(str(paths).split("\n")),
                      float(str(created)), float(str(used)))


def _write_tar(tree: Path, target: Path) -> None:
    """A tar of `tree` that depends only on its content: sorted, owner-less (the step's user owns it again when
    it is put into the next VM)."""

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(tree.rglob("*")):
            archive.add(path, arcname=path.relative_to(tree).as_posix(), recursive=False, filter=anonymous)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- keys ---------------------------------------------------------------------------------------------------


def hash_files(workspace: Path, patterns: list[str], excluded: Callable[[str], bool]) -> str:
    """hashFiles(): one sha256 over the matching files' paths and contents; empty when nothing matches (as
    GitHub Actions' hashFiles does)."""
    files: list[str] = []
    for directory, subdirectories, names in os.walk(workspace):
        relative_dir = PurePosixPath(Path(directory).relative_to(workspace))
        subdirectories[:] = sorted(name for name in subdirectories if not excluded(str(relative_dir / name)))
        files.extend(str(relative_dir / name).removeprefix("./") for name in names
                     if not excluded(str(relative_dir / name)))
    matched = [path for path in select(patterns, files) if (workspace / path).is_file()]
    if not matched:
        return ""
    digest = hashlib.sha256()
    for path in matched:
        digest.update(f"{path}\0{_sha256(workspace / path)}\n".encode())
    return digest.hexdigest()


def resolve_key(key: str, workspace: Path, excluded: Callable[[str], bool]) -> str:
    """The cache key as the step runs: each hashFiles() marker replaced by the hash of today's files."""
    patterns = iter(deferred_patterns(key))
    resolved = HASH_FILES_MARKER.sub(lambda _found: hash_files(workspace, next(patterns), excluded), key)
    if not resolved.strip():
        raise InvalidInput(f"the cache key {key!r} is empty once rendered")
    return resolved


def under_paths(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)
