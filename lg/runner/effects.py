"""A step's effects between its VM and the host workspace: stored, verified, then applied or discarded.

When a step succeeds, every file it created or modified is fetched out of its VM into the run's state
directory (`runs/<run>/effects/<step>/`) before the VM is destroyed. From there the effects are either applied
at once, or held until a human approves them, hours later and from another process if need be. Applying
verifies every held file against the SHA-256 the guest reported (and the approver approved), so what lands is
byte for byte what was approved; a file that changed on the host since the gate opened is a conflict, and then
nothing is applied.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from lg.model import FileChange
from lg.runner.workspace import UnsafeChange, apply_changes, check_change_path, staging_area

CHUNK = 1024 * 1024


def effects_dir(run_dir: Path, step_id: str) -> Path:
    return run_dir / "effects" / step_id


def files_to_fetch(changes: Sequence[FileChange]) -> list[str]:
    """The paths whose content must come out of the guest (deletions and symlinks carry all they need)."""
    return [change.path for change in changes if change.kind != "deleted" and change.symlink_target is None]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def host_sha256(workspace: Path, relative: str) -> str | None:
    """The current content digest of a workspace path: a file's bytes, a symlink's text, None if absent."""
    path = workspace.joinpath(*PurePosixPath(relative).parts)
    if path.is_symlink():
        return hashlib.sha256(str(path.readlink()).encode()).hexdigest()
    if path.is_file():
        return file_sha256(path)
    return "directory" if path.is_dir() else None


def base_digests(workspace: Path, changes: Sequence[FileChange]) -> dict[str, str | None]:
    """What each changed path holds on the host now: recorded when a gate opens, checked before applying."""
    return {change.path: host_sha256(workspace, change.path) for change in changes}


def verify_held(held: Path, changes: Sequence[FileChange]) -> None:
    """Every held file is exactly what the guest reported; anything else (edited, truncated, missing) refuses."""
    for relative in files_to_fetch(changes):
        change = next(c for c in changes if c.path == relative)
        path = held.joinpath(*PurePosixPath(relative).parts)
        if path.is_symlink() or not path.is_file():
            raise UnsafeChange(f"held effect {relative!r} is missing from {held}; nothing was applied")
        if change.sha256 is not None and file_sha256(path) != change.sha256:
            raise UnsafeChange(f"held effect {relative!r} in {held} does not match the digest the guest reported "
                               "(it was altered after the step ran); nothing was applied")


def check_conflicts(workspace: Path, changes: Sequence[FileChange], base: Mapping[str, str | None]) -> None:
    """Refuse when the host workspace changed a path since its base was recorded (someone edited it meanwhile)."""
    for change in changes:
        if change.path not in base:
            continue
        current = host_sha256(workspace, change.path)
        after = None if change.kind == "deleted" else change.sha256
        if current not in (base[change.path], after):  # `after`: already applied by an earlier, killed attempt
            raise UnsafeChange(f"{change.path!r} changed in the host workspace since the step ran; applying its "
                               "effects would overwrite that, so nothing was applied")


def apply_held(workspace: Path, changes: Sequence[FileChange], held: Path,
               base: Mapping[str, str | None] | None = None) -> None:
    """Apply held effects: verify, stage on the workspace's filesystem, then rename into place, deletions last.

    Idempotent: applying the same effects again leaves the same workspace, so a run killed half-way through
    applying is finished by `lg resume` without harm.
    """
    for change in changes:
        check_change_path(workspace, change)
    verify_held(held, changes)
    if base is not None:
        check_conflicts(workspace, changes, base)
    with staging_area(workspace) as staged:
        for relative in files_to_fetch(changes):
            source = held.joinpath(*PurePosixPath(relative).parts)
            target = staged.joinpath(*PurePosixPath(relative).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        verify_held(staged, changes)  # what is about to be renamed into place is what was approved
        apply_changes(workspace, changes, staged)


def already_applied(workspace: Path, changes: Sequence[FileChange]) -> bool:
    """True when the workspace already holds every effect (a resume after the renames, before the record)."""
    for change in changes:
        current = host_sha256(workspace, change.path)
        if change.kind == "deleted":
            if current is not None:
                return False
        elif current != change.sha256:
            return False
    return True


def discard(held: Path) -> None:
    shutil.rmtree(held, ignore_errors=True)
