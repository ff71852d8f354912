"""The host workspace: what is copied into a step's VM, and how its changes come back.

Changes come back only after a step succeeds, in two phases: every changed file is first fetched from the
guest into a staging directory *inside the workspace* (same filesystem, so the next phase is renames only);
only when all of it is staged are the files renamed into place and deletions applied. A step that fails, times
out or is interrupted before that leaves the host workspace exactly as it was; a disk that fills up while
staging fails the step before anything is touched.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lg.errors import LgError
from lg.model import FileChange

IGNORE_FILE = ".lgignore"
STAGING_PREFIX = ".lg-apply-"
ALWAYS_IGNORED = (".lg/", f"{STAGING_PREFIX}*/", ".git/")
"""Never copied into a guest: lg's own state, half-applied staging, and git's internals (large, and a step
that rewrites .git/ hooks or config is exactly what must not come back). Add `!.git/` to opt in."""


class UnsafeChange(LgError):
    """A change that must not be applied to the host (escaping path or symlink)."""


@dataclass(frozen=True)
class IgnoreRules:
    """gitignore-style patterns: `name`, `dir/`, `/anchored`, `*.glob`, `**/deep`, and `!negation`."""

    patterns: tuple[tuple[str, bool, bool, bool], ...]  # (pattern, negated, directory_only, anchored)

    @classmethod
    def parse(cls, lines: Sequence[str]) -> IgnoreRules:
        patterns = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            line = line[1:] if negated else line
            directory_only = line.endswith("/")
            line = line.rstrip("/")
            anchored = line.startswith("/") or "/" in line
            patterns.append((line.lstrip("/"), negated, directory_only, anchored))
        return cls(tuple(patterns))

    def ignored(self, relative: str, is_dir: bool) -> bool:
        verdict = False
        for pattern, negated, directory_only, anchored in self.patterns:
            if directory_only and not is_dir:
                continue
            if _matches(pattern, relative, anchored):
                verdict = not negated
        return verdict


def _matches(pattern: str, relative: str, anchored: bool) -> bool:
    if anchored:
        return fnmatch.fnmatchcase(relative, pattern) or (
            pattern.startswith("**/") and fnmatch.fnmatchcase(relative, pattern[3:])
        )
    return fnmatch.fnmatchcase(PurePosixPath(relative).name, pattern)


def load_ignore_rules(workspace: Path) -> IgnoreRules:
    path = workspace / IGNORE_FILE
    user_lines = path.read_text().splitlines() if path.is_file() else []
    return IgnoreRules.parse([*ALWAYS_IGNORED, *user_lines])


def exclude_function(workspace: Path, rules: IgnoreRules) -> Callable[[str], bool]:
    """For the VM's put_tree: True for a workspace-relative path that must not be copied in.

    A path is excluded when it, or any directory above it, is ignored (as git does).
    """

    def excluded(relative: str) -> bool:
        parts = PurePosixPath(relative).parts
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            is_dir = depth < len(parts) or (workspace / prefix).is_dir()
            if rules.ignored(prefix, is_dir):
                return True
        return False

    return excluded


def check_change_path(workspace: Path, change: FileChange) -> Path:
    """The host path for a change, refusing anything that would land outside the workspace."""
    relative = PurePosixPath(change.path)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise UnsafeChange(f"refusing change to {change.path!r}: not a path inside the workspace")
    target = workspace.joinpath(*relative.parts)
    # Every existing directory on the way must be a real directory inside the workspace, not a symlink
    # planted to redirect the write elsewhere.
    parent = workspace
    for part in relative.parts[:-1]:
        parent = parent / part
        if parent.is_symlink():
            raise UnsafeChange(f"refusing change to {change.path!r}: {parent} is a symlink")
    if change.symlink_target is not None:
        resolved = (target.parent / change.symlink_target).resolve()
        if not resolved.is_relative_to(workspace.resolve()):
            raise UnsafeChange(
                f"refusing symlink {change.path!r} -> {change.symlink_target!r}: it points outside the workspace"
            )
    return target


@contextmanager
def staging_area(workspace: Path) -> Iterator[Path]:
    """A scratch directory on the workspace's filesystem, removed whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=workspace))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def apply_changes(workspace: Path, changes: Sequence[FileChange], staged: Path) -> None:
    """Apply staged changes: renames into place first, deletions last. Paths were checked before staging."""
    targets = [(change, check_change_path(workspace, change)) for change in changes]
    for change, target in targets:
        if change.kind == "deleted":
            continue
        source = staged.joinpath(*PurePosixPath(change.path).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # a directory replaced by a file or link
        if change.symlink_target is not None:
            _replace_with_symlink(target, change.symlink_target)
        else:
            if change.mode is not None:
                source.chmod(change.mode & 0o7777)
            source.replace(target)
    for change, target in targets:
        if change.kind == "deleted" and (target.exists() or target.is_symlink()):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()


def _replace_with_symlink(target: Path, link_text: str) -> None:
    temporary = target.with_name(f".{target.name}.lg-link")
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    temporary.symlink_to(link_text)
    temporary.replace(target)
