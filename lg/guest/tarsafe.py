"""Tar streams in and out of a directory, refusing anything that would land outside it.

Used on both sides: the agent extracts what the host puts, and the host extracts what an untrusted guest
sends back. Extraction walks every parent directory with O_NOFOLLOW relative to the previous one, so nothing
is ever written through a symlink; member names must be relative without `..`; symlink targets must stay
inside the target when read lexically; hard links must point at a member inside; devices and fifos are
refused; setuid/setgid/sticky bits are dropped. Python's own `filter="data"` is not used because the guest's
Python (3.11.2 in Debian 12) predates it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterable

from lg.guest.protocol import ErrorCode, ProtocolError, check_relative_path

COPY_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeStats:
    __slots__ = ("bytes", "files")

    def __init__(self, files: int = 0, bytes: int = 0) -> None:
        self.files = files  # non-directory entries
        self.bytes = bytes  # bytes of regular file content

    def __repr__(self) -> str:
        return f"TreeStats(files={self.files}, bytes={self.bytes})"


def unsafe(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNSAFE, message)


def check_link_target(name: str, target: str) -> None:
    """Refuse a symlink whose target is absolute or climbs out of the extraction root."""
    if not target or "\0" in target or target.startswith("/"):
        raise unsafe(f"{name}: symlink to {target!r} points outside the target directory")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise unsafe(f"{name}: symlink to {target!r} points outside the target directory")


# --- extraction ---------------------------------------------------------------------------------------


class Extractor:
    """Extracts the members of one archive under `dest` (created if missing)."""

    def __init__(self, dest: str, owner: tuple[int, int] | None = None, max_bytes: int | None = None) -> None:
        os.makedirs(dest, exist_ok=True)
        self.root = os.open(dest, _DIR_FLAGS & ~os.O_NOFOLLOW)
        self.owner = owner
        if owner:
            os.fchown(self.root, *owner)  # the destination itself belongs to the owner too
        self.max_bytes = max_bytes
        self.stats = TreeStats()
        self._dir_modes: list[tuple[str, int]] = []

    def close(self) -> None:
        if self.root >= 0:
            os.close(self.root)
            self.root = -1

    def extract_all(self, archive: tarfile.TarFile) -> TreeStats:
        try:
            for member in archive:
                self.extract(archive, member)
            self._apply_dir_modes()
        finally:
            self.close()
        return self.stats

    def extract(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.isdir() and not [p for p in member.name.split("/") if p not in ("", ".")]:
            return  # the archive's own root entry ("./")
        name = check_relative_path(member.name)
        parent = self._open_parent(name, create=True)
        leaf = posixpath.basename(name)
        try:
            if member.isdir():
                self._make_dir(parent, name, leaf, member)
            elif member.isreg():
                self._write_file(parent, name, leaf, member, archive)
            elif member.issym():
                self._make_symlink(parent, name, leaf, member)
            elif member.islnk():
                self._make_hardlink(parent, name, leaf, member)
            else:
                raise unsafe(f"{name}: only files, directories and links may be transferred")
        finally:
            os.close(parent)

    def _open_parent(self, name: str, create: bool) -> int:
        fd = os.dup(self.root)
        try:
            for part in name.split("/")[:-1]:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as problem:
                    raise unsafe(f"{name}: {part!r} on its path is a symlink or not a directory") from problem
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _clear(self, parent: int, name: str, leaf: str, keep_dir: bool) -> None:
        try:
            existing = os.lstat(leaf, dir_fd=parent)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(existing.st_mode):
            if keep_dir:
                return
            try:
                os.rmdir(leaf, dir_fd=parent)
            except OSError as problem:
                raise ProtocolError(ErrorCode.FAILED, f"{name}: cannot replace a directory") from problem
        else:
            os.unlink(leaf, dir_fd=parent)

    def _make_dir(self, parent: int, name: str, leaf: str, member: tarfile.TarInfo) -> None:
        self._clear(parent, name, leaf, keep_dir=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(leaf, 0o755, dir_fd=parent)
        if self.owner:
            os.chown(leaf, *self.owner, dir_fd=parent, follow_symlinks=False)
        self._dir_modes.append((name, member.mode & 0o777))

    def _write_file(
        self, parent: int, name: str, leaf: str, member: tarfile.TarInfo, archive: tarfile.TarFile
    ) -> None:
        self._clear(parent, name, leaf, keep_dir=False)
        if self.max_bytes is not None and self.stats.bytes + member.size > self.max_bytes:
            raise ProtocolError(ErrorCode.FAILED, f"{name}: transfer exceeds {self.max_bytes} bytes")
        source = archive.extractfile(member)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(leaf, flags, 0o600, dir_fd=parent)
        try:
            while source is not None and (chunk := source.read(COPY_CHUNK)):
                os.write(out, chunk)
            if self.owner:
                os.fchown(out, *self.owner)
            os.fchmod(out, member.mode & 0o777)
            _set_mtime(out, member.mtime)
        finally:
            os.close(out)
        self.stats.files += 1
        self.stats.bytes += member.size

    def _make_symlink(self, parent: int, name: str, leaf: str, member: tarfile.TarInfo) -> None:
        check_link_target(name, member.linkname)
        self._clear(parent, name, leaf, keep_dir=False)
        os.symlink(member.linkname, leaf, dir_fd=parent)
        if self.owner:
            os.chown(leaf, *self.owner, dir_fd=parent, follow_symlinks=False)
        self.stats.files += 1

    def _make_hardlink(self, parent: int, name: str, leaf: str, member: tarfile.TarInfo) -> None:
        source_name = check_relative_path(member.linkname)
        source_parent = self._open_parent(source_name, create=False)
        try:
            self._clear(parent, name, leaf, keep_dir=False)
            os.link(
                posixpath.basename(source_name), leaf,
                src_dir_fd=source_parent, dst_dir_fd=parent, follow_symlinks=False,
            )
        finally:
            os.close(source_parent)
        self.stats.files += 1

    def _apply_dir_modes(self) -> None:
        # Last, so a read-only directory does not stop its own members from being written.
        for name, mode in reversed(self._dir_modes):
            parent = self._open_parent(name, create=False)
            try:
                child = os.open(posixpath.basename(name), _DIR_FLAGS, dir_fd=parent)
                os.fchmod(child, mode)
                os.close(child)
            finally:
                os.close(parent)


def _set_mtime(fd: int, mtime: float) -> None:
    # An absurd timestamp in the archive is not worth failing the transfer for.
    with contextlib.suppress(OSError, OverflowError, ValueError):
        os.utime(fd, ns=(int(mtime * 1e9),) * 2)


# --- archiving ----------------------------------------------------------------------------------------


def add_tree(
    archive: tarfile.TarFile, root: str, exclude: Callable[[str], bool] | None = None
) -> TreeStats:
    """Everything under `root` (not root itself), symlinks kept as links, `exclude(relpath)` skipped."""
    stats = TreeStats()
    for entry in sorted(os.listdir(root)):
        _add(archive, root, entry, exclude, stats)
    return stats


def add_paths(archive: tarfile.TarFile, root: str, relative_paths: Iterable[str]) -> TreeStats:
    """The named paths under `root` (directories recursively); all must exist."""
    names = [check_relative_path(path) for path in relative_paths]
    missing = [name for name in names if not os.path.lexists(os.path.join(root, name))]
    if missing:
        raise ProtocolError(ErrorCode.NOT_FOUND, "not found: " + ", ".join(missing[:20]))
    stats = TreeStats()
    for name in names:
        _add(archive, root, name, None, stats)
    return stats


def _add(
    archive: tarfile.TarFile, root: str, top: str, exclude: Callable[[str], bool] | None, stats: TreeStats
) -> None:
    pending = [top]
    while pending:
        relative = pending.pop()
        if exclude is not None and exclude(relative):
            continue
        path = os.path.join(root, relative)
        try:
            info = _tar_info(archive, path, relative)
        except FileNotFoundError:
            continue  # vanished while we walked
        if info is None:
            continue
        if info.isdir():
            archive.addfile(info)
            children = sorted(os.listdir(path), reverse=True)
            pending.extend(f"{relative}/{child}" for child in children)
        elif info.isreg():
            with open(path, "rb") as handle:
                archive.addfile(info, handle)
            stats.files += 1
            stats.bytes += info.size
        else:
            archive.addfile(info)
            stats.files += 1


def _tar_info(archive: tarfile.TarFile, path: str, relative: str) -> tarfile.TarInfo | None:
    """The member for `path`, or None for what a workspace transfer skips (sockets, fifos, devices)."""
    status = os.lstat(path)
    if not (stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode) or stat.S_ISLNK(status.st_mode)):
        return None
    info = tarfile.TarInfo(relative)
    info.mode = stat.S_IMODE(status.st_mode) & 0o777
    # Whole seconds, as ustar tar keeps them: a fractional mtime made tarfile write a PAX header for every
    # member, and parsing those tripled the guest's cost of extracting a file (4.3 ms against 1.4 ms under TCG).
    # Names that need PAX (long, non-ASCII) still get it.
    info.mtime = int(status.st_mtime)
    if stat.S_ISDIR(status.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(status.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
    else:
        info.size = status.st_size
    return info
