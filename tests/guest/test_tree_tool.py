"""The tree helper (lg/guest/tree.c, /opt/lg/bin/lg-tree in the guest), compiled as the image build compiles it
and run here on the host against the Python code it replaces: tarsafe.Extractor for `put`, manifest.take for
`scan`. Needs root (to chown, and to make device members refused) and gcc, as the image build does."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lg.guest import manifest, tarsafe, tree
from lg.guest.protocol import ErrorCode, ProtocolError
from lg.images.build import helper_name
from tests.guest.conftest import guest_bin

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("gcc") is None,
                                reason="needs root and gcc (scripts/setup installs gcc)")

OWNER = (1234, 1234)
Record = dict[str, bytes]
FIELDS = ("kind", "path", "mode", "ino", "size", "mtime_ns", "ctime_ns", "sha256", "target")


@pytest.fixture(scope="module")
def tool() -> Path:
    """Compiled as the image build compiles it, once per test session (tests/guest/conftest.py)."""
    return guest_bin() / helper_name("lg/guest/tree.c")


# --- helpers --------------------------------------------------------------------------------------------


def tar_of_tree(src: Path) -> bytes:
    """What lg's host sends for a put (lg.vm.agent_client put_tree)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        tarsafe.add_tree(archive, str(src))
    return buffer.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    info.mtime = 1_700_000_000
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_of(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def parse(out: bytes) -> dict[str, Record]:
    fields = out.split(b"\0")
    assert fields[-1] == b"" and (len(fields) - 1) % 9 == 0, "records are groups of 9 NUL-ended fields"
    records = [dict(zip(FIELDS, fields[i:i + 9], strict=True)) for i in range(0, len(fields) - 1, 9)]
    by_path = {os.fsdecode(record["path"]): record for record in records}
    assert len(by_path) == len(records), "each path once"
    return by_path


def encode(records: dict[str, Record]) -> bytes:
    return b"".join(b"".join(record[field] + b"\0" for field in FIELDS) for record in records.values())


def put(tool: Path, dest: Path, stream: bytes, *options: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(tool), "put", str(dest), *options], input=stream, capture_output=True,
                          timeout=60, check=False)


def scan(tool: Path, root: Path, previous: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(tool), "scan", str(root)], input=previous, capture_output=True, timeout=60,
                          check=False)


def feed(tool: Path, args: list[str], stream: bytes, scratch: Path) -> tuple[int, bytes, bytes]:
    """Run with `stream` written to stdin in full: a BrokenPipeError here means the tool stopped reading."""
    scratch.mkdir(exist_ok=True)
    with (scratch / "out").open("w+b") as out, (scratch / "err").open("w+b") as err:
        process = subprocess.Popen([str(tool), *args], stdin=subprocess.PIPE, stdout=out, stderr=err)
        assert process.stdin is not None
        try:
            process.stdin.write(stream)
            process.stdin.close()
        finally:
            code = process.wait(timeout=60)
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def reference(stream: bytes, dest: Path, owner: tuple[int, int] | None) -> tuple[manifest.Manifest, tarsafe.TreeStats]:
    extractor = tarsafe.Extractor(str(dest), owner=owner)
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r|") as archive:
        stats = extractor.extract_all(archive)
    return manifest.take(str(dest)), stats


def assert_same_as_take(records: dict[str, Record], taken: manifest.Manifest, same_tree: bool) -> None:
    """kind, mode, size, sha256 and target per path as manifest.take has them (and the stat key too when
    both looked at the same tree)."""
    assert sorted(records) == sorted(taken)
    for path, entry in taken.items():
        record = records[path]
        assert record["kind"].decode() == entry.kind, path
        assert int(record["mode"]) == entry.mode, path
        if entry.kind in ("file", "symlink"):
            assert int(record["size"]) == entry.size, path
        assert record["sha256"].decode() == (entry.sha256 or ""), path
        assert record["target"] == (os.fsencode(entry.target) if entry.target is not None else b""), path
        if same_tree:
            assert key_of(record) == entry.key, path


def key_of(record: Record) -> tuple[int, int, int, int]:
    return int(record["ino"]), int(record["size"]), int(record["mtime_ns"]), int(record["ctime_ns"])


def assert_stat_matches(records: dict[str, Record], root: Path) -> None:
    for path, record in records.items():
        status = os.lstat(root / path)
        assert key_of(record) == (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns), path


def workspace(src: Path) -> Path:
    """A tree with what a workspace has: nested dirs, odd names, modes, links, big and empty files."""
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "a" / "b" / "c" / "deep.txt").write_text("deep\n")
    (src / "a" / "notes.md").write_text("# notes\n")
    (src / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom((1 << 20) + 12345))
    long_dir = src / ("long-directory-name-" * 4)
    long_dir.mkdir()
    (long_dir / ("and-a-long-file-name-" * 3 + ".txt")).write_text("long\n")  # a path over 100 characters
    (src / "héllo wörld ✓.txt").write_text("non-ascii\n")
    (src / "a" / "link").symlink_to("b/c/deep.txt")
    (src / "a" / "b" / "up").symlink_to("../notes.md")
    (src / "dangling").symlink_to("nothing/here")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "setuid").write_text("#!/bin/sh\n")
    (src / "setuid").chmod(0o4755)
    (src / "ro").mkdir()
    (src / "ro" / "inside.txt").write_text("kept\n")
    (src / "ro" / "sub").mkdir()
    (src / "ro" / "sub" / "x").write_text("x\n")
    (src / "ro" / "sub").chmod(0o500)
    (src / "ro").chmod(0o555)
    return src


# --- put ------------------------------------------------------------------------------------------------


def test_put_gives_the_tree_and_manifest_the_python_extractor_gives(tool: Path, tmp_path: Path) -> None:
    src = workspace(tmp_path / "src")
    stream = tar_of_tree(src)
    assert b"PaxHeader" in stream  # the long and the non-ASCII names came as PAX headers
    dest = tmp_path / "out" / "dest"  # created, parents too
    done = put(tool, dest, stream, f"--owner={OWNER[0]}:{OWNER[1]}")
    assert done.returncode == 0, done.stderr
    records = parse(done.stdout)
    taken, stats = reference(stream, tmp_path / "python", OWNER)

    assert_same_as_take(records, taken, same_tree=False)
    assert_stat_matches(records, dest)
    assert done.stderr == f"files={stats.files} bytes={stats.bytes}\n".encode()
    assert stats.files == 13 and stats.bytes > 1 << 20

    assert int(records["setuid"]["mode"]) == 0o755  # the setuid bit dropped
    assert int(records["run.sh"]["mode"]) == 0o755
    assert int(records["ro"]["mode"]) == 0o555 and int(records["ro/sub"]["mode"]) == 0o500
    assert (dest / "ro" / "sub" / "x").read_text() == "x\n"
    assert records["a/link"]["kind"] == b"symlink" and records["a/link"]["target"] == b"b/c/deep.txt"
    assert (dest / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert os.lstat(dest / "big.bin").st_mtime == int(os.lstat(src / "big.bin").st_mtime)  # whole seconds
    for path in [dest, *(dest / name for name in records)]:
        status = os.lstat(path)
        assert (status.st_uid, status.st_gid) == OWNER, path


def test_put_without_an_owner_leaves_everything_to_the_caller(tool: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    done = put(tool, tmp_path / "dest", tar_of_tree(src))
    assert done.returncode == 0 and done.stderr == b"files=1 bytes=1\n"
    assert os.lstat(tmp_path / "dest" / "f").st_uid == os.getuid()
    assert list(parse(done.stdout)) == ["f"]


def test_setuid_setgid_and_sticky_bits_are_dropped(tool: Path, tmp_path: Path) -> None:
    # add_tree already sends modes & 0o777: these members are built by hand, as a careless sender would
    stream = tar_of(member("tool", data=b"#!/bin/sh\n", mode=0o6755), member("tmp", tarfile.DIRTYPE, mode=0o1777))
    done = put(tool, tmp_path / "dest", stream)
    assert done.returncode == 0, done.stderr
    records = parse(done.stdout)
    assert (int(records["tool"]["mode"]), int(records["tmp"]["mode"])) == (0o755, 0o777)
    assert stat.S_IMODE(os.lstat(tmp_path / "dest" / "tool").st_mode) == 0o755


def test_put_replaces_what_is_in_the_way_as_the_extractor_does(tool: Path, tmp_path: Path) -> None:
    stream = tar_of(member("file-to-dir", tarfile.DIRTYPE, mode=0o755), member("file-to-dir/in", data=b"in"),
                    member("dir-to-file", data=b"now a file"), member("link-to-file", data=b"not followed"),
                    member("kept", tarfile.DIRTYPE, mode=0o700), member("kept/new", data=b"new"),
                    member("./", tarfile.DIRTYPE, mode=0o700))  # the archive's own root: skipped
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    for root in (tmp_path / "tool", tmp_path / "python"):
        root.mkdir()
        (root / "file-to-dir").write_text("was a file")
        (root / "dir-to-file").mkdir()
        (root / "link-to-file").symlink_to(outside)
        (root / "kept").mkdir()
        (root / "kept" / "old").write_text("old")
    done = put(tool, tmp_path / "tool", stream)
    assert done.returncode == 0, done.stderr
    records = parse(done.stdout)
    taken, _ = reference(stream, tmp_path / "python", None)
    assert_same_as_take(records, taken, same_tree=False)
    assert_stat_matches(records, tmp_path / "tool")
    assert outside.read_text() == "precious"
    assert stat.S_IMODE(os.lstat(tmp_path / "tool").st_mode) != 0o700


def test_a_non_empty_directory_in_the_way_of_a_file_fails(tool: Path, tmp_path: Path) -> None:
    (tmp_path / "dest" / "d").mkdir(parents=True)
    (tmp_path / "dest" / "d" / "x").write_text("x")
    code, out, err = feed(tool, ["put", str(tmp_path / "dest")], tar_of(member("d", data=b"file")) + bytes(1 << 20),
                          tmp_path / "run")
    assert (code, out) == (4, b"") and err == b"lg-tree: d: cannot replace a directory\n"


def test_a_tree_deeper_than_a_path_can_be_is_extracted_and_listed(tool: Path, tmp_path: Path) -> None:
    parts = ["d" * 40] * 200  # 8,200 characters: beyond PATH_MAX, so opened piece by piece
    members = [member("/".join(parts[:depth]), tarfile.DIRTYPE, mode=0o755) for depth in range(1, len(parts) + 1)]
    deepest = "/".join([*parts, "leaf.txt"])
    done = put(tool, tmp_path / "dest", tar_of(*members, member(deepest, data=b"at the bottom\n")))
    assert done.returncode == 0, done.stderr
    records = parse(done.stdout)
    assert len(records) == len(parts) + 1
    assert records[deepest]["sha256"] == hashlib.sha256(b"at the bottom\n").hexdigest().encode()


UNSAFE = [
    [member("/abs/path", data=b"x")],
    [member("../outside.txt", data=b"x")],
    [member("a/../../outside.txt", data=b"x")],
    [member("evil", tarfile.SYMTYPE, link="/etc/passwd")],
    [member("evil", tarfile.SYMTYPE, link="../outside.txt")],
    [member("d/evil", tarfile.SYMTYPE, link="../../outside.txt")],
    [member("dir", tarfile.SYMTYPE, link="."), member("dir2", tarfile.SYMTYPE, link="dir/.."),
     member("dir2/outside.txt", data=b"overwritten")],
    [member("sub", tarfile.DIRTYPE, mode=0o755), member("link", tarfile.SYMTYPE, link="sub"),
     member("link/x", data=b"through a link")],
    [member("file", data=b"x"), member("hard", tarfile.LNKTYPE, link="file")],  # even inside: never sent
    [member("fifo", tarfile.FIFOTYPE)],
    [member("dev", tarfile.CHRTYPE)],
]
UNSAFE_IDS = ["absolute", "dotdot", "dotdot-inside", "symlink-absolute", "symlink-up", "symlink-up-nested",
              "symlink-chain", "write-through-symlink", "hardlink", "fifo", "device"]


@pytest.mark.parametrize("members", UNSAFE, ids=UNSAFE_IDS)
def test_unsafe_members_are_refused_and_the_stream_still_read_to_its_end(
    tool: Path, tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    box = tmp_path / "box"
    (box / "dest").mkdir(parents=True)
    (box / "outside.txt").write_text("precious")
    trailer = member("after/big.bin", data=os.urandom(4 << 20))  # far more than a pipe holds
    code, out, err = feed(tool, ["put", str(box / "dest")], tar_of(*members, trailer), tmp_path / "run")
    assert (code, out) == (1, b""), err
    assert err.startswith(b"lg-tree: ") and err.count(b"\n") == 1
    assert sorted(p.name for p in box.iterdir()) == ["dest", "outside.txt"]
    assert (box / "outside.txt").read_text() == "precious"
    assert not (box / "dest" / "after").exists() and not (box / "dest" / "sub" / "x").exists()


def test_refusal_messages(tool: Path, tmp_path: Path) -> None:
    def refused(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
        done = put(tool, tmp_path / "dest", tar_of(*members))
        assert (done.returncode, done.stdout) == (1, b"")
        return done.stderr

    assert refused(member("x/../../y", data=b"")) == b"lg-tree: path 'x/../../y' is empty or leaves its root\n"
    assert refused(member("/etc/x", data=b"")) == b"lg-tree: path '/etc/x' is not a relative path\n"
    assert refused(member("d/l", tarfile.SYMTYPE, link="../..")) == (
        b"lg-tree: d/l: symlink to '../..' points outside the target directory\n")
    assert refused(member("./h", tarfile.LNKTYPE, link="x")) == (
        b"lg-tree: h: only files, directories and symlinks may be transferred\n")
    assert refused(member("s", tarfile.SYMTYPE, link="."), member("s/f", data=b"")) == (
        b"lg-tree: s/f: 's' on its path is a symlink or not a directory\n")


def rewrite_header(stream: bytes, offset: int, field: slice, value: bytes) -> bytes:
    """`stream` with one field of the header at `offset` replaced, its checksum made right again."""
    header = bytearray(stream[offset:offset + 512])
    header[field] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return stream[:offset] + bytes(header) + stream[offset + 512:]


def corrupt(stream: bytes, how: str) -> bytes:
    if how == "checksum":
        return stream[:3] + bytes([stream[3] ^ 0x20]) + stream[4:]  # a name byte: the sum no longer matches
    if how == "magic":
        return rewrite_header(stream, 0, slice(257, 265), b"ustor\x0000")
    if how == "base-256":
        return rewrite_header(stream, 0, slice(124, 136), b"\x80" + bytes(10) + b"\x05")
    if how == "garbage-number":
        return rewrite_header(stream, 0, slice(100, 108), b"0o644\0\0\0")
    if how == "pax-record":  # the first header is the PAX one of the long name
        return stream[:512] + b"99 path=x\n" + stream[522:]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["checksum", "magic", "base-256", "garbage-number", "pax-record"])
def test_a_stream_that_is_not_a_tar_is_refused_and_read_to_its_end(tool: Path, tmp_path: Path, how: str) -> None:
    stream = tar_of(member("x" * 120, data=b"first"), member("big", data=os.urandom(4 << 20)))
    code, out, err = feed(tool, ["put", str(tmp_path / "dest")], corrupt(stream, how), tmp_path / "run")
    assert (code, out) == (3, b""), err
    assert err.startswith(b"lg-tree: not a valid tar stream")


@pytest.mark.parametrize("cut", ["in-data", "in-header", "no-end-block", "empty"])
def test_a_truncated_stream_is_refused(tool: Path, tmp_path: Path, cut: str) -> None:
    stream = tar_of(member("a", data=b"a" * 1000), member("b", data=b"b" * 100_000))
    second = 512 + 1024  # header and padded data of "a"
    end = {"in-data": second + 512 + 50_000, "in-header": second + 100, "no-end-block": second + 512 + 100_352,
           "empty": 0}[cut]
    done = put(tool, tmp_path / "dest", stream[:end])
    assert (done.returncode, done.stdout) == (3, b""), done.stderr
    assert b"truncated" in done.stderr


def test_usage_errors(tool: Path, tmp_path: Path) -> None:
    for args in (["put"], ["put", str(tmp_path), "--owner=12"], ["put", str(tmp_path), "--owner=a:b"],
                 ["scan"], ["scan", "a", "b"], ["frobnicate", "x"], []):
        code, out, err = feed(tool, args, bytes(1 << 20), tmp_path / "run")  # read to the end even then
        assert (code, out) == (2, b""), args
        assert err.startswith(b"lg-tree: "), args


# --- scan -----------------------------------------------------------------------------------------------


def test_scan_gives_what_manifest_take_gives(tool: Path, tmp_path: Path) -> None:
    root = workspace(tmp_path / "root")
    os.mkfifo(root / "a" / "fifo")
    (root / "to-dir").symlink_to("a/b")  # recorded as a symlink, never followed
    (root / "abs").symlink_to("/etc")
    done = scan(tool, root)
    assert done.returncode == 0 and done.stderr == b""
    records = parse(done.stdout)
    assert_same_as_take(records, manifest.take(str(root)), same_tree=True)
    assert records["a/fifo"]["kind"] == b"other" and records["to-dir"]["kind"] == b"symlink"
    assert not any(path.startswith("to-dir/") for path in records)


def test_scan_reuses_a_previous_hash_only_when_the_stat_key_matches(tool: Path, tmp_path: Path) -> None:
    for name in ("same", "rewritten", "other-key"):
        (tmp_path / name).write_text(f"{name}\n")
    previous = parse(scan(tool, tmp_path).stdout)
    fake = b"0" * 64
    for record in previous.values():
        record["sha256"] = fake
    previous["other-key"]["ino"] = b"1"
    (tmp_path / "rewritten").write_text("REWRITTEN\n")  # same size, new ctime
    done = scan(tool, tmp_path, encode(previous))
    assert done.returncode == 0, done.stderr
    records = parse(done.stdout)
    assert records["same"]["sha256"] == fake  # not read again: the key said it is the same file
    for name in ("rewritten", "other-key"):
        assert records[name]["sha256"].decode() == manifest.file_sha256(str(tmp_path / name))


def test_put_does_not_read_back_what_it_wrote(tool: Path, tmp_path: Path) -> None:
    """Its manifest's hashes are those kept while writing: a file changed on disk between the write and the
    listing would show the hash of what was written (here: nothing changed, and the hashes are right)."""
    data = os.urandom(3 << 20)
    done = put(tool, tmp_path / "dest", tar_of(member("d", tarfile.DIRTYPE, mode=0o755), member("d/x", data=data)))
    again = parse(scan(tool, tmp_path / "dest").stdout)
    assert parse(done.stdout) == again
    assert again["d/x"]["sha256"] == hashlib.sha256(data).hexdigest().encode()


def test_scan_of_a_missing_root_or_a_file_gives_nothing(tool: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for root in (tmp_path / "missing", tmp_path / "file"):
        done = scan(tool, root)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")


def test_scan_refuses_malformed_previous_records(tool: Path, tmp_path: Path) -> None:
    for previous in (b"file\0a\0", b"no terminator"):
        done = scan(tool, tmp_path, previous)
        assert (done.returncode, done.stdout) == (2, b"")


# --- serve: the agent's one long-lived lg-tree (lg.guest.tree) -------------------------------------------


@pytest.fixture
def served(tool: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(tree.BIN_DIR_ENV, str(tool.parent))
    monkeypatch.setattr(tree, "_running", None)
    yield
    if tree._running is not None:
        tree._running.stop()


def chunks_of(stream: bytes, size: int = 5000) -> list[bytes]:
    return [stream[start:start + size] for start in range(0, len(stream), size)]


def test_one_server_answers_request_after_request_and_stays_in_step_after_a_refusal(
        served: None, tmp_path: Path) -> None:
    stream = tar_of_tree(workspace(tmp_path / "src"))
    stats, taken = tree.put(str(tmp_path / "one"), OWNER, chunks_of(stream))
    server = tree._server().process.pid
    expected, expected_stats = reference(stream, tmp_path / "reference", OWNER)
    assert (stats.files, stats.bytes) == (expected_stats.files, expected_stats.bytes)
    assert manifest.diff(expected, taken) == []
    with pytest.raises(ProtocolError) as refused:  # refused mid-stream: the rest is still read, then answered
        tree.put(str(tmp_path / "two"), None, chunks_of(tar_of(member("../escape", data=b"x" * 100_000))))
    assert refused.value.code == ErrorCode.UNSAFE and "escape" in refused.value.message
    (tmp_path / "one" / "a" / "notes.md").write_text("changed\n")
    _, again = tree.put(str(tmp_path / "one"), OWNER, chunks_of(tar_of(member("new.txt", data=b"new"))))
    changed = manifest.diff(taken, again)
    assert [(change["path"], change["kind"]) for change in changed] == [("a/notes.md", "modified"),
                                                                         ("new.txt", "created")]
    assert tree._server().process.pid == server


def test_a_server_that_died_is_replaced_by_the_next_request(served: None, tmp_path: Path) -> None:
    first = tree._server()
    first.process.kill()
    first.process.wait()
    _, taken = tree.put(str(tmp_path / "tree"), None, [tar_of(member("file", data=b"x"))])
    assert list(taken) == ["file"] and tree._server() is not first
