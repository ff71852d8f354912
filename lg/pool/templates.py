"""Template snapshots: a VM booted once to agent-ready and saved, so that new VMs are restored, not booted.

A template lives in `<cache>/snapshots/<digest>/`, beside the images. Its digest covers everything the saved
state depends on: the image digest, the machine shape, the accelerator asked for, and the hypervisor's
fingerprint (binary, version, host kernel and CPU), so a changed image or QEMU gives a new digest and the
old template is stale. It is written in a temporary directory and renamed into place only once complete, with
a manifest of its files' sizes and SHA-256s: a half-written template (a full disk, a crash) is never seen, and
a template whose files no longer match their manifest is refused (and removed), never restored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lg.errors import LgError
from lg.pool.warmup import ROUTINE as WARMUP_ROUTINE
from lg.pool.warmup import exercise
from lg.vm.api import ExecRequest, SnapshotBackend, VmSpec
from lg.vm.host import process_alive

FORMAT = 3  # bump when what a template holds changes
RAM_FILE = "ram"  # the template's guest RAM: clones map it copy-on-write instead of loading it
MANIFEST = "template.json"
TEMPLATE_HOSTNAME = "lg-template"
HASH_CHUNK = 1 << 20
SPACE_MARGIN_MIB = 64  # beyond the guest's memory: device state, a disk overlay copy


class TemplateProblem(LgError):
    """A template that cannot be used: missing, stale, corrupt, or it failed to save."""

    def __init__(self, message: str, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing  # nothing there yet (as opposed to something there and unusable)


@dataclass(frozen=True)
class Template:
    path: Path
    digest: str
    accelerator: str
    build_seconds: float
    size_bytes: int  # on disk (its RAM file is sparse)


class TemplateStore:
    def __init__(self, root: Path, hypervisor: SnapshotBackend) -> None:
        self.root = root
        self.hypervisor = hypervisor
        self.fingerprint = hypervisor.fingerprint()
        self._verified: dict[Path, tuple[int, int, int]] = {}  # files already hashed, by (inode, size, mtime)
        self._lock = threading.Lock()

    def digest_for(self, spec: VmSpec, warmup: ExecRequest | None = None) -> str:
        inputs = {"format": FORMAT, "backend": self.hypervisor.name, "fingerprint": self.fingerprint,
                  "image": spec.image.digest, "vcpus": spec.vcpus, "memory_mib": spec.memory_mib,
                  "accelerator": spec.accelerator, "warmup": _describe_warmup(warmup),
                  "warmup_routine": WARMUP_ROUTINE,
                  "command_line": self.hypervisor.boot_signature(
                      replace(spec, hostname=TEMPLATE_HOSTNAME, network=None))}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()

    def get(self, spec: VmSpec, warmup: ExecRequest | None = None) -> Template:
        """The verified template for `spec`; TemplateProblem says why there is none."""
        digest = self.digest_for(spec, warmup)
        path = self.root / digest
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise TemplateProblem("no template snapshot for this image, shape and hypervisor yet",
                                  missing=True) from None
        except (OSError, ValueError) as error:
            self.discard(path)
            raise TemplateProblem(f"template {digest[:12]} has an unreadable manifest ({error}); removed") from None
        self._verify(path, manifest)
        on_disk = sum((path / name).stat().st_blocks * 512 for name in manifest["files"])  # the RAM file is sparse
        return Template(path, digest, str(manifest["accelerator"]), float(manifest["build_seconds"]), on_disk)

    def ensure(self, spec: VmSpec, warmup: ExecRequest | None = None) -> tuple[Template, bool]:
        """The template for `spec`, built first if there is none yet (one builder at a time per template,
        across processes); the flag says whether this call built it. A template that is there but unusable
        (corrupt) raises TemplateProblem after removing it: the caller cold-boots now, the next call rebuilds."""
        with self._lock, self._build_lock(self.digest_for(spec, warmup)):
            try:
                return self.get(spec, warmup), False
            except TemplateProblem as problem:
                if not problem.missing:
                    raise
                return self.build(spec, warmup), True

    def build(self, spec: VmSpec, warmup: ExecRequest | None = None) -> Template:
        """Boot, run `warmup` (a confined no-op: the guest then has the profile's AppArmor policy loaded and
        its seccomp library imported, which costs a second under TCG), save, publish."""
        digest = self.digest_for(spec, warmup)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".tmp-{digest[:12]}-{os.getpid()}-{secrets.token_hex(3)}"
        started = time.monotonic()
        state = staging / "state"
        template_spec = replace(spec, hostname=TEMPLATE_HOSTNAME, network=None, ram_file=state / RAM_FILE)
        self._check_space(spec)
        try:
            state.mkdir(parents=True)
            with self.hypervisor.boot(template_spec) as vm:
                accelerator = vm.accelerator
                if not exercise(vm, warmup):
                    raise TemplateProblem("the template's warm-up command failed")
                self.hypervisor.save_snapshot(vm, state)
            if (state / RAM_FILE).exists():  # a backend that keeps no guest RAM in a file leaves none
                _punch_zero_pages(state / RAM_FILE)
                (state / RAM_FILE).chmod(0o444)  # clones map it privately; nothing may write it after this
            files = _describe(staging)
            manifest = {"format": FORMAT, "digest": digest, "image_digest": spec.image.digest,
                        "accelerator": accelerator, "fingerprint": self.fingerprint, "created": time.time(),
                        "build_seconds": round(time.monotonic() - started, 3), "files": files}
            _write_synced(staging / MANIFEST, json.dumps(manifest, indent=2))
            _fsync_dir(staging)
            if self._publish(staging, self.root / digest):
                self._remember_verified(self.root / digest, files)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):
                raise TemplateProblem(f"cannot save the template snapshot: {error}") from error
            raise
        self._remove_stale(spec, digest)
        return self.get(spec, warmup)

    def _remember_verified(self, path: Path, files: dict[str, Any]) -> None:
        """The files `_describe` just hashed need no second hash in `get` (the rename kept their inodes)."""
        for relative in files:
            with contextlib.suppress(OSError):
                stat = (path / relative).stat()
                self._verified[path / relative] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def _check_space(self, spec: VmSpec) -> None:
        """The template's RAM lives in a file while it is built: a disk that fills up then kills the template VM
        (SIGBUS). Refuse up front when the guest's whole memory would not fit."""
        needed = (spec.memory_mib + SPACE_MARGIN_MIB) << 20
        free = shutil.disk_usage(self.root).free
        if free < needed:
            raise TemplateProblem(f"not enough free disk space for a template in {self.root}: "
                                  f"{needed >> 20} MiB needed, {free >> 20} MiB free")

    def discard(self, path: Path) -> None:
        """Remove a template (corrupt, or failing to restore), atomically: renamed aside first, then deleted."""
        if path.exists():
            _remove_template(path)
        self._verified = {p: v for p, v in self._verified.items() if path not in p.parents}

    def reap(self) -> list[str]:
        """Staging directories left by a crashed builder (their pid is gone)."""
        reaped = []
        for path in self.root.glob(".tmp-*") if self.root.is_dir() else ():
            pid = path.name.split("-")[2]
            if not pid.isdigit() or not process_alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
                reaped.append(path.name)
        for path in self.root.glob(".doomed-*") if self.root.is_dir() else ():
            shutil.rmtree(path, ignore_errors=True)
        return reaped

    def published(self) -> list[dict[str, Any]]:
        return self.list_at(self.root)

    @staticmethod
    def list_at(root: Path) -> list[dict[str, Any]]:
        """The published templates under `root` (staging and doomed directories are not)."""
        found = []
        for path in sorted(root.iterdir()) if root.is_dir() else ():
            if path.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError):
                manifest = json.loads((path / MANIFEST).read_text())
                found.append({"digest": path.name, "image_digest": manifest.get("image_digest"),
                              "accelerator": manifest.get("accelerator"),
                              "bytes": sum((path / name).stat().st_blocks * 512 for name in manifest["files"])})
        return found

    # --- internals ---

    def _verify(self, path: Path, manifest: dict[str, Any]) -> None:
        files = manifest.get("files")
        if manifest.get("format") != FORMAT or not isinstance(files, dict) or not files:
            self.discard(path)
            raise TemplateProblem(f"template {path.name[:12]} is of another format; removed")
        for relative, entry in files.items():
            file = path / relative
            try:
                stat = file.stat()
            except OSError:
                self.discard(path)
                raise TemplateProblem(f"template {path.name[:12]} lacks {relative}; removed") from None
            seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            if self._verified.get(file) == seen:
                continue
            if stat.st_size != entry["size"] or file_digest(file) != entry["sha256"]:
                self.discard(path)
                raise TemplateProblem(f"template {path.name[:12]}: {relative} does not match its manifest "
                                      "(corrupt or changed); removed")
            self._verified[file] = seen

    @contextlib.contextmanager
    def _build_lock(self, digest: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f".lock-{digest[:16]}").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _publish(self, staging: Path, final: Path) -> bool:
        """True if `staging` became `final`; False if another process published the same template first."""
        try:
            staging.rename(final)
        except OSError:
            if not (final / MANIFEST).exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return False
        return True

    def _remove_stale(self, spec: VmSpec, keep: str) -> None:
        """Older templates of the same image and shape (built by another QEMU or host kernel)."""
        for entry in self.published():
            if entry["digest"] != keep and entry["image_digest"] == spec.image.digest:
                with contextlib.suppress(OSError, ValueError):
                    manifest = json.loads((self.root / entry["digest"] / MANIFEST).read_text())
                    if manifest.get("fingerprint") != self.fingerprint:
                        self.discard(self.root / entry["digest"])


def prune_templates(root: Path, image_digests: set[str]) -> list[dict[str, Any]]:
    """Remove templates of images no longer in the cache, or of another template format (never used again)."""
    removed = []
    for entry in TemplateStore.list_at(root):
        path = root / entry["digest"]
        try:
            fmt = json.loads((path / MANIFEST).read_text()).get("format")
        except (OSError, ValueError):
            fmt = None
        if (entry["image_digest"] not in image_digests or fmt != FORMAT) and _remove_template(path):
            removed.append(entry)
    return removed


def _remove_template(path: Path) -> bool:
    """Renamed aside first, then deleted: a template is never seen half-removed. False if it could not be."""
    doomed = path.with_name(f".doomed-{path.name[:12]}-{secrets.token_hex(3)}")
    try:
        path.rename(doomed)
    except OSError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def _describe_warmup(warmup: ExecRequest | None) -> Any:
    if warmup is None:
        return None
    return {"argv": warmup.argv, "script": warmup.script, "uid": warmup.uid, "gid": warmup.gid,
            "confine": warmup.confine}


def _describe(staging: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for file in sorted(p for p in staging.rglob("*") if p.is_file()):
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
        files[str(file.relative_to(staging))] = {"size": file.stat().st_size, "sha256": file_digest(file)}
    return files


def file_digest(path: Path) -> str:
    """SHA-256 over a file's data regions and their offsets: a sparse RAM file of 512 MiB with 100 MiB in it
    is read for its 100 MiB (holes read as zeros, so the digest still changes with any byte)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for start, end in _data_regions(fd):
            digest.update(f"{start}:{end};".encode())
            os.lseek(fd, start, os.SEEK_SET)
            remaining = end - start
            while remaining > 0:
                chunk = os.read(fd, min(HASH_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
        digest.update(f"size:{os.fstat(fd).st_size}".encode())
    finally:
        os.close(fd)
    return digest.hexdigest()


def _data_regions(fd: int) -> list[tuple[int, int]]:
    size = os.fstat(fd).st_size
    regions, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            break
        end = os.lseek(fd, start, os.SEEK_HOLE)
        regions.append((start, end))
        offset = end
    return regions


def _punch_zero_pages(path: Path) -> None:
    """Turn the RAM file's all-zero pages into holes (the guest zeroes what it frees, init_on_free): less disk,
    less to hash, and pages a clone reads there come from the shared zero page."""
    if not path.exists():
        return
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        for start, length in _zero_runs(fd):
            libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE, ctypes.c_long(start),
                           ctypes.c_long(length))
        os.fsync(fd)
    finally:
        os.close(fd)


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_PAGE = 4096
_ZERO_PAGE = bytes(_PAGE)


def _zero_runs(fd: int) -> list[tuple[int, int]]:
    """(offset, length) of each run of all-zero pages in the file's data regions."""
    runs: list[tuple[int, int]] = []
    for start, end in _data_regions(fd):
        os.lseek(fd, start, os.SEEK_SET)
        offset = start
        while offset < end:
            block = os.read(fd, min(HASH_CHUNK, end - offset))
            if not block:
                break
            for index in range(0, len(block) - _PAGE + 1, _PAGE):
                if block[index:index + _PAGE] == _ZERO_PAGE:
                    page = offset + index
                    if runs and runs[-1][0] + runs[-1][1] == page:
                        runs[-1] = (runs[-1][0], runs[-1][1] + _PAGE)
                    else:
                        runs.append((page, _PAGE))
            offset += len(block)
    return runs


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def building_now(root: Path) -> bool:
    """Whether a live process is building a template under `root` right now (its staging directory is there):
    a lease waiting meanwhile is waiting for that build (lg.runner.lease_wait says so)."""
    try:
        staging = list(root.glob(".tmp-*")) if root.is_dir() else []
    except OSError:
        return False
    for path in staging:
        pid = path.name.split("-")[2] if path.name.count("-") >= 3 else ""
        if pid.isdigit() and process_alive(int(pid)):
            return True
    return False
