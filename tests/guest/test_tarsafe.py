"""Safe extraction: nothing lands outside the target, whatever the archive says."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from lg.guest import manifest
from lg.guest.protocol import ErrorCode, ProtocolError
from lg.guest.tarsafe import Extractor, add_tree


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "", mode: int = 0o644) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


def archive_of(*members: tuple) -> tarfile.TarFile:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, data)
    buffer.seek(0)
    return tarfile.open(fileobj=buffer, mode="r|")


def extract(dest: Path, *members: tuple, max_bytes: int | None = None) -> None:
    Extractor(str(dest), max_bytes=max_bytes).extract_all(archive_of(*members))


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """`box/dest` is the target; anything appearing in `box` next to it is an escape."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside.txt").write_text("precious")
    return tmp_path


def assert_no_escape(box: Path) -> None:
    assert sorted(p.name for p in box.iterdir()) == ["dest", "outside.txt"]
    assert (box / "outside.txt").read_text() == "precious"


@pytest.mark.parametrize(
    "members",
    [
        [member("/abs/path", data=b"x")],
        [member("../outside.txt", data=b"x")],
        [member("a/../../outside.txt", data=b"x")],
        [member("evil", tarfile.SYMTYPE, link="/etc/passwd")],
        [member("evil", tarfile.SYMTYPE, link="../outside.txt")],
        [member("d/evil", tarfile.SYMTYPE, link="../../outside.txt")],
        [member("hard", tarfile.LNKTYPE, link="../outside.txt")],
        [member("hard", tarfile.LNKTYPE, link="/etc/passwd")],
        [member("dir", tarfile.SYMTYPE, link="."), member("dir2", tarfile.SYMTYPE, link="dir/.."),
         member("dir2/outside.txt", data=b"overwritten")],
        [member("sub", tarfile.DIRTYPE, mode=0o755), member("in", tarfile.SYMTYPE, link="sub"),
         member("in/file", data=b"through a link")],
        [member("fifo", tarfile.FIFOTYPE)],
        [member("dev", tarfile.CHRTYPE)],
    ],
    ids=["absolute", "dotdot", "dotdot-inside", "symlink-absolute", "symlink-up", "symlink-up-nested",
         "hardlink-up", "hardlink-absolute", "symlink-chain", "write-through-symlink", "fifo", "device"],
)
def test_escapes_are_refused(box: Path, members: list[tuple]) -> None:
    with pytest.raises(ProtocolError) as refused:
        extract(box / "dest", *members)
    assert refused.value.code == ErrorCode.UNSAFE
    assert_no_escape(box)


def test_an_existing_symlink_is_replaced_not_followed(box: Path) -> None:
    (box / "dest" / "file").symlink_to(box / "outside.txt")
    extract(box / "dest", member("file", data=b"new content"))
    assert (box / "dest" / "file").read_bytes() == b"new content"
    assert not (box / "dest" / "file").is_symlink()
    assert_no_escape(box)


def test_modes_are_kept_but_special_bits_dropped(box: Path) -> None:
    extract(box / "dest", member("tool", data=b"#!", mode=0o4755), member("ro", tarfile.DIRTYPE, mode=0o555),
            member("ro/inner", data=b"x"))
    assert stat.S_IMODE((box / "dest" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((box / "dest" / "ro").stat().st_mode) == 0o555
    assert (box / "dest" / "ro" / "inner").read_bytes() == b"x"


def test_inner_symlinks_and_hardlinks_are_allowed(box: Path) -> None:
    extract(box / "dest", member("a/file", data=b"x"), member("a/link", tarfile.SYMTYPE, link="file"),
            member("b/up", tarfile.SYMTYPE, link="../a/file"), member("hard", tarfile.LNKTYPE, link="a/file"))
    assert (box / "dest" / "b" / "up").read_bytes() == b"x"
    assert (box / "dest" / "hard").stat().st_ino == (box / "dest" / "a" / "file").stat().st_ino


def test_size_limit(box: Path) -> None:
    with pytest.raises(ProtocolError, match="exceeds 10 bytes"):
        extract(box / "dest", member("big", data=b"x" * 11), max_bytes=10)


def test_add_tree_skips_sockets_and_fifos(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("x")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        stats = add_tree(archive, str(tmp_path))
    assert stats.files == 1
    buffer.seek(0)
    with tarfile.open(fileobj=buffer) as archive:
        assert archive.getnames() == ["file"]


def test_manifest_diff_reuses_hashes_only_for_identical_stat(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("one")
    before = manifest.take(str(tmp_path))
    after = manifest.take(str(tmp_path), previous=before)
    assert manifest.diff(before, after) == []
    (tmp_path / "a").write_text("two")  # same size, new ctime: rehashed, so seen
    changes = manifest.diff(before, manifest.take(str(tmp_path), previous=before))
    assert [(c["path"], c["kind"]) for c in changes] == [("a", "modified")]


def test_manifest_does_not_report_directories(tmp_path: Path) -> None:
    before = manifest.take(str(tmp_path))
    (tmp_path / "newdir" / "deeper").mkdir(parents=True)
    assert manifest.diff(before, manifest.take(str(tmp_path))) == []
