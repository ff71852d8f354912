from __future__ import annotations

from pathlib import Path

import pytest

from lg.model import FileChange
from lg.runner.workspace import (
    IgnoreRules,
    UnsafeChange,
    apply_changes,
    exclude_function,
    load_ignore_rules,
    staging_area,
)


def test_ignore_rules_follow_gitignore(tmp_path: Path) -> None:
    (tmp_path / ".lgignore").write_text("# comment\n*.pyc\nbuild/\n/top.txt\ndocs/**/*.tmp\n!keep.pyc\n")
    (tmp_path / "build").mkdir()
    excluded = exclude_function(tmp_path, load_ignore_rules(tmp_path))
    assert excluded("a/b/c.pyc") and not excluded("a/keep.pyc")
    assert excluded("build/out.o") and excluded("build")
    assert excluded("top.txt") and not excluded("sub/top.txt")
    assert excluded("docs/x/y.tmp")
    assert excluded(".lg/lg.db") and excluded(".git/config")
    assert not excluded("src/main.py")


def test_git_can_be_opted_in() -> None:
    rules = IgnoreRules.parse([".git/", "!.git/"])
    assert not rules.ignored(".git", is_dir=True)


def stage(staged: Path, relative: str, content: bytes) -> None:
    path = staged / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_changes_apply_renames_then_deletions(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "old.txt").write_text("old")
    (workspace / "mod.txt").write_text("before")
    changes = [
        FileChange("new/dir/file.sh", "created", size=2, mode=0o755),
        FileChange("mod.txt", "modified", size=5, mode=0o644),
        FileChange("old.txt", "deleted"),
        FileChange("link", "created", symlink_target="mod.txt"),
    ]
    with staging_area(workspace) as staged:
        stage(staged, "new/dir/file.sh", b"#!")
        stage(staged, "mod.txt", b"after")
        apply_changes(workspace, changes, staged)
    assert (workspace / "new/dir/file.sh").read_bytes() == b"#!"
    assert (workspace / "new/dir/file.sh").stat().st_mode & 0o777 == 0o755
    assert (workspace / "mod.txt").read_text() == "after"
    assert not (workspace / "old.txt").exists()
    assert (workspace / "link").readlink() == Path("mod.txt")
    assert sorted(p.name for p in workspace.iterdir()) == ["link", "mod.txt", "new"]  # staging removed


@pytest.mark.parametrize("change", [
    FileChange("../escape.txt", "created"),
    FileChange("/etc/passwd", "modified"),
    FileChange("evil", "created", symlink_target="../../etc/shadow"),
    FileChange("abs", "created", symlink_target="/etc/shadow"),
])
def test_unsafe_changes_are_refused_before_anything_is_applied(tmp_path: Path, change: FileChange) -> None:
    (tmp_path / "keep.txt").write_text("x")
    good = FileChange("keep.txt", "deleted")
    with staging_area(tmp_path) as staged, pytest.raises(UnsafeChange):
        apply_changes(tmp_path, [good, change], staged)
    assert (tmp_path / "keep.txt").exists()


def test_writes_through_a_planted_symlink_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "sneaky").symlink_to(outside)
    with staging_area(workspace) as staged, pytest.raises(UnsafeChange, match="is a symlink"):
        stage(staged, "sneaky/x", b"x")
        apply_changes(workspace, [FileChange("sneaky/x", "created")], staged)
    assert not (outside / "x").exists()
