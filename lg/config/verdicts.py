"""Checks that passed once for exactly this input are not run again: a cache of positive verdicts.

Loading a risk policy checks every rule against its own examples (about 0.1 s for the shipped policies), and a
VM profile's AppArmor part is compiled by apparmor_parser on the host (about 0.06 s); `lg run` and
`lg validate` did both every time, for files that rarely change. A verdict is an empty file under
`<cache>/verdicts/`, named by the SHA-256 of what was checked and of the checker (lg's own source, or the
parser binary), so any change to either runs the check again. Only passes are remembered: a failure is always
found afresh, with its message, file and line. Losing the cache costs time, never a check.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

from lg.config.locations import default_cache_dir


def passed(kind: str, subject: bytes, checker: str) -> bool:
    return _path(kind, subject, checker).is_file()


def remember(kind: str, subject: bytes, checker: str) -> None:
    path = _path(kind, subject, checker)
    with contextlib.suppress(OSError):  # a read-only or full cache only means checking again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


@functools.cache
def lg_source_digest() -> str:
    """lg's own code, for verdicts that its code gives (what a rule matches can change with any module): each
    module's name, size and modification time, which an edit, a checkout or an upgrade all change (reading
    them all cost 17 ms a run; their stat, 1 ms)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent.parent
    for path in sorted(package.rglob("*.py")):
        status = path.stat()
        digest.update(f"{path.relative_to(package)}:{status.st_size}:{status.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def file_identity(path: str) -> str:
    """A binary, by where it is and its size and times (an upgrade replaces it)."""
    binary = Path(path).resolve()
    status = binary.stat()
    return f"{binary}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}"


def _path(kind: str, subject: bytes, checker: str) -> Path:
    key = hashlib.sha256(kind.encode() + b"\0" + checker.encode() + b"\0" + subject).hexdigest()
    root = Path(os.environ["LG_CACHE_DIR"]) if os.environ.get("LG_CACHE_DIR") else default_cache_dir()
    return root / "verdicts" / key[:2] / key
