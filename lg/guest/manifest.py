"""Workspace manifests and the changes between two of them.

The agent takes a manifest when the workspace is put, and compares the tree against it when asked for the
changes. Content hashes of unchanged files are reused when (inode, size, mtime, ctime) all match: ctime
cannot be set from user space, so a file rewritten in place always shows a new ctime. `full=True` rehashes
everything regardless. Directories are tracked but not reported: changes name files and symlinks.
"""

from __future__ import annotations

import hashlib
import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

HASH_CHUNK = 1 << 20


class Entry:
    __slots__ = ("key", "kind", "mode", "sha256", "size", "target")

    def __init__(
        self, kind: str, size: int, mode: int, sha256: str | None, target: str | None,
        key: tuple[int, int, int, int],
    ) -> None:
        self.kind = kind  # file | symlink | dir | other
        self.size = size
        self.mode = mode  # permission bits
        self.sha256 = sha256  # file content, or the link text of a symlink
        self.target = target  # symlink target
        self.key = key  # inode, size, mtime_ns, ctime_ns


Manifest = dict[str, Entry]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _entry(path: str, status: os.stat_result, previous: Entry | None) -> Entry:
    key = (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    mode = stat.S_IMODE(status.st_mode)
    if stat.S_ISLNK(status.st_mode):
        target = os.readlink(path)
        digest = hashlib.sha256(os.fsencode(target)).hexdigest()
        return Entry("symlink", len(os.fsencode(target)), mode, digest, target, key)
    if stat.S_ISDIR(status.st_mode):
        return Entry("dir", 0, mode, None, None, key)
    if not stat.S_ISREG(status.st_mode):
        return Entry("other", 0, mode, None, None, key)
    if previous is not None and previous.kind == "file" and previous.key == key:
        return Entry("file", status.st_size, mode, previous.sha256, None, key)
    return Entry("file", status.st_size, mode, file_sha256(path), None, key)


def take(root: str, previous: Manifest | None = None) -> Manifest:
    """Every entry under `root` by POSIX relative path; symlinks are recorded, never followed."""
    manifest: Manifest = {}
    pending = [""]
    while pending:
        relative = pending.pop()
        directory = os.path.join(root, relative) if relative else root
        try:
            children = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for child in children:
            name = f"{relative}/{child.name}" if relative else child.name
            try:
                entry = _entry(child.path, child.stat(follow_symlinks=False), (previous or {}).get(name))
            except (FileNotFoundError, PermissionError):
                continue
            manifest[name] = entry
            if entry.kind == "dir":
                pending.append(name)
    return manifest


def _reported(entry: Entry | None) -> bool:
    return entry is not None and entry.kind in ("file", "symlink")


def _change(path: str, kind: str, after: Entry | None, before: Entry | None) -> dict[str, Any]:
    return {
        "path": path,
        "kind": kind,
        "size": after.size if after else None,
        "sha256": after.sha256 if after else None,
        "mode": after.mode if after else None,
        "old_mode": before.mode if before else None,
        "symlink_target": after.target if after else None,
    }


def diff(before: Manifest, after: Manifest) -> list[dict[str, Any]]:
    """created / modified / deleted files and symlinks, sorted by path."""
    changes = []
    for path in sorted(set(before) | set(after)):
        old = before.get(path) if _reported(before.get(path)) else None
        new = after.get(path) if _reported(after.get(path)) else None
        if old is None and new is not None:
            changes.append(_change(path, "created", new, None))
        elif old is not None and new is None:
            changes.append(_change(path, "deleted", None, old))
        elif old is not None and new is not None and _differs(old, new):
            changes.append(_change(path, "modified", new, old))
    return changes


def _differs(old: Entry, new: Entry) -> bool:
    return (old.kind, old.sha256, old.mode, old.target) != (new.kind, new.sha256, new.mode, new.target)


def summary(manifest: Manifest) -> dict[str, int]:
    files = [entry for entry in manifest.values() if entry.kind == "file"]
    return {"entries": len(manifest), "files": len(files), "bytes": sum(entry.size for entry in files)}
