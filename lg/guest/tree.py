"""A put's per-file work in native code: extracting the workspace's tar stream, hashing what it writes.

Under TCG every guest instruction is emulated, and Python pays for it per file: extracting and hashing a small
file cost 3.5-5 ms in the agent against 0.12 ms in C (measured on a 60-file workspace), so a 2,000-file
repository cost seconds per step before anything ran. `lg-tree` (lg/guest/tree.c, built into the image as
/opt/lg/bin/lg-tree) does it; the agent streams the bytes to it and reads back the manifest of what is there
afterwards, as records of nine NUL-ended fields (kind, path, mode, inode, size, mtime_ns, ctime_ns, sha256,
target). Later manifests (`changes`) stay Python's lg.guest.manifest.take: with the hashes of unchanged files
reused it is a stat per file, as fast there as lg-tree's scan once its records are parsed (measured: 2,000
files in about 0.2 s either way). lg.guest.tarsafe stays the host's extractor: what an untrusted guest sends
back is parsed by nothing but the host's Python.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterable

from lg.guest.manifest import Entry, Manifest
from lg.guest.protocol import ErrorCode, ProtocolError
from lg.guest.tarsafe import TreeStats

BIN_DIR_ENV = "LG_GUEST_BIN"  # host-side agent tests point it at a compiled copy
FIELDS = 9
# What each exit status of an lg-tree command means (lg/guest/tree.c), as the agent reports it; 2 (usage)
# and 5 (the command crashed) are lg's own bugs: failed.
_EXIT_CODES = {1: ErrorCode.UNSAFE, 3: ErrorCode.BAD_REQUEST, 4: ErrorCode.FAILED}


def tool() -> str:
    return os.path.join(os.environ.get(BIN_DIR_ENV, "/opt/lg/bin"), "lg-tree")


def put(dest: str, owner: tuple[int, int] | None, chunks: Iterable[bytes]) -> tuple[TreeStats, Manifest]:
    """Extract the tar stream `chunks` into `dest` (owned by `owner`), and the manifest of `dest` after it."""
    arguments = ["put", dest] + ([f"--owner={owner[0]}:{owner[1]}"] if owner is not None else [])
    records, report = _server().call(arguments, chunks)
    return _stats(report), parse(records)


def parse(records: bytes) -> Manifest:
    fields = records.split(b"\0")
    if len(fields) % FIELDS != 1 or fields[-1]:
        raise ProtocolError(ErrorCode.FAILED, "lg-tree printed a malformed manifest")
    manifest: Manifest = {}
    for start in range(0, len(fields) - 1, FIELDS):
        kind, path, mode, inode, size, mtime, ctime, digest, target = fields[start:start + FIELDS]
        key = (int(inode), int(size), int(mtime), int(ctime))
        name = kind.decode()
        shown = key[1] if name == "file" else len(target) if name == "symlink" else 0
        manifest[os.fsdecode(path)] = Entry(name, shown, int(mode), digest.decode() or None,
                                            os.fsdecode(target) if name == "symlink" else None, key)
    return manifest


class _Server:
    """One `lg-tree serve` for the agent's life (started in the template, so every clone has it running):
    starting a process per request cost more than the work for a small workspace (about 25 ms under TCG)."""

    def __init__(self) -> None:
        try:
            self.process = subprocess.Popen([tool(), "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL)
        except FileNotFoundError as problem:
            raise ProtocolError(ErrorCode.FAILED, f"{tool()} is not in the guest image: rebuild it "
                                                  "(lg image build)") from problem
        if self.process.stdin is None or self.process.stdout is None:
            raise RuntimeError("Popen with PIPE always makes both pipes")
        self.requests, self.answers = self.process.stdin.fileno(), self.process.stdout.fileno()
        self.broken = False

    def call(self, arguments: list[str], body: Iterable[bytes]) -> tuple[bytes, bytes]:
        """Run one command with `body` as its stdin: its stdout and stderr, or the failure it reported."""
        try:
            packed = b"".join(os.fsencode(argument) + b"\0" for argument in arguments)
            _write(self.requests, struct.pack(">I", len(packed)) + packed)
            for chunk in body:
                if chunk:
                    _write(self.requests, struct.pack(">I", len(chunk)) + chunk)
            _write(self.requests, struct.pack(">I", 0))
            code, out_length, err_length = struct.unpack(">III", _read(self.answers, 12))
            out, err = _read(self.answers, out_length), _read(self.answers, err_length)
        except OSError as problem:
            self.stop()
            raise ProtocolError(ErrorCode.FAILED, f"lg-tree stopped serving: {problem}") from problem
        except BaseException:  # the body's source failed (the host went away): the request is half sent
            self.stop()
            raise
        _check(code, err)
        return out, err

    def stop(self) -> None:
        """Out of step with it, or it died: the next request starts a new server."""
        self.broken = True
        self.process.kill()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


_running: _Server | None = None


def _server() -> _Server:
    global _running  # noqa: PLW0603 - one per agent process
    if _running is None or _running.broken or _running.process.poll() is not None:
        _running = _Server()
    return _running


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read(fd: int, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        chunk = os.read(fd, length - len(data))
        if not chunk:
            raise OSError(0, "it closed its answers")
        data += chunk
    return bytes(data)


def _check(code: int, report: bytes) -> None:
    if code == 0:
        return
    message = report.decode(errors="replace").strip().splitlines()
    text = (message[-1] if message else f"exited with {code}").removeprefix("lg-tree: ")
    raise ProtocolError(_EXIT_CODES.get(code, ErrorCode.FAILED), text)


def _stats(report: bytes) -> TreeStats:
    """lg-tree's last line on success: files=N bytes=M."""
    fields = dict(part.split("=", 1) for part in report.decode(errors="replace").split() if "=" in part)
    try:
        return TreeStats(int(fields["files"]), int(fields["bytes"]))
    except (KeyError, ValueError):
        raise ProtocolError(ErrorCode.FAILED, "lg-tree did not report what it wrote") from None
