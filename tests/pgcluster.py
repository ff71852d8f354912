"""A throwaway PostgreSQL 15 cluster for tests and benchmarks: initdb + pg_ctl on a temporary directory,
listening on a unix socket in that directory only (no TCP port), stopped and removed at the end.

initdb and postgres refuse to run as root, so as root they run as Debian's `postgres` user (runuser), on a
directory chowned to it. Debian's binaries live in /usr/lib/postgresql/15/bin (package postgresql-15,
installed by scripts/setup --dev). Connections use the cluster's socket and trust authentication: nothing
outside this host, and nobody but local users, can reach it while it lives.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

BIN = Path(os.environ.get("LG_PG_BIN", "/usr/lib/postgresql/15/bin"))


def available() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if not (BIN / "initdb").exists() or not (BIN / "pg_ctl").exists():
        return f"PostgreSQL 15 binaries not found in {BIN} (apt-get install postgresql-15)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    return None


class Cluster:
    """One cluster; `database()` makes a fresh, empty database in it and returns its URL."""

    def __init__(self, fsync: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lg-pg-"))
        self.data = self.root / "data"
        self.fsync = fsync
        self._numbers = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def start(self) -> Cluster:
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        fsync = "on" if self.fsync else "off"
        options = f"-k {self.root} -c listen_addresses='' -c fsync={fsync} -c max_connections=300"
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}"

    def database(self) -> str:
        name = f"lg_{os.getpid()}_{next(self._numbers)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def sql(self, statement: str, url: str | None = None) -> None:
        import psycopg

        with psycopg.connect(url or self.url(), autocommit=True) as connection:
            connection.execute(statement.encode())

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            log = self.root / "log"
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()} "
                               f"{log.read_text() if log.exists() else ''}")
