"""Host confinement of each VMM process in a cgroup of its own, with memory and pids limits.

This is the part of Firecracker's jailer that applies to QEMU here: a guest that finds a way to make its VMM
balloon or fork cannot take the host down with it. cgroup v2 (one unified tree) and the v1 layout with separate
memory and pids hierarchies (what some CI machines have) are both handled; the VMM's cgroups are created under
the cgroup lg itself runs in, and removed when the VMM is gone. A host where no cgroup can be made for the VMM
refuses to start it (fail closed) and says why.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from lg.errors import EnvironmentUnfit

ROOT = Path("/sys/fs/cgroup")
GROUP = "luminaguard"
VMM_OVERHEAD_MIB = 1024  # QEMU itself: under TCG the translation cache alone may take up to 1 GiB
PIDS_BASE = 64  # QEMU's own threads (I/O, RCU, workers), plus one per vCPU


@dataclass(frozen=True)
class VmmCgroup:
    paths: tuple[Path, ...]
    memory_max_mib: int
    pids_max: int
    layout: str  # v2 | v1
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, object]:
        return {"cgroups": [str(p) for p in self.paths], "memory_max_mib": self.memory_max_mib,
                "pids_max": self.pids_max, "layout": self.layout}


def confine(pid: int, vm_id: str, guest_memory_mib: int, vcpus: int) -> VmmCgroup:
    """Put the VMM process `pid` in new cgroups with its limits; raises EnvironmentUnfit when impossible."""
    memory = guest_memory_mib + VMM_OVERHEAD_MIB
    pids = PIDS_BASE + 2 * vcpus
    try:
        if (ROOT / "cgroup.controllers").exists():
            path = _own_cgroup("") / GROUP / vm_id
            _create(path.parent, enable=("memory", "pids"))
            _create(path)
            _write(path / "memory.max", str(memory << 20))
            _write(path / "pids.max", str(pids))
            _write(path / "cgroup.procs", str(pid))
            return VmmCgroup((path,), memory, pids, "v2")
        memory_path = _own_cgroup("memory") / GROUP / vm_id
        pids_path = _own_cgroup("pids") / GROUP / vm_id
        for path in (memory_path, pids_path):
            _create(path.parent)
            _create(path)
        _write(memory_path / "memory.limit_in_bytes", str(memory << 20))
        _write(pids_path / "pids.max", str(pids))
        for path in (memory_path, pids_path):
            _write(path / "cgroup.procs", str(pid))
        return VmmCgroup((memory_path, pids_path), memory, pids, "v1")
    except OSError as error:
        raise EnvironmentUnfit(
            f"cannot put the VMM of {vm_id} in a cgroup of its own ({error.strerror or error}: "
            f"{error.filename or ''}); refusing to run it unconfined",
            fix="run lg as root on a host with cgroups mounted read-write at /sys/fs/cgroup") from error


def release(cgroup: VmmCgroup) -> None:
    """Remove the VMM's cgroups once it has exited (a cgroup with processes cannot be removed: retry briefly)."""
    for path in cgroup.paths:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


REAP_AFTER_SECONDS = 60.0


def reap() -> list[str]:
    """Remove empty VMM cgroups left by an lg that died (their VMM died with it). An empty one younger than a
    minute is left alone: it may be a VMM's being set up right now by another thread or lg (created, its pid
    not written yet); removing it made that VMM fail to start."""
    removed = []
    now = time.time()
    for parent in _parents():
        with contextlib.suppress(OSError):
            for path in parent.iterdir():
                if not path.is_dir() or now - path.stat().st_mtime < REAP_AFTER_SECONDS:
                    continue
                if not _read(path / "cgroup.procs").strip():
                    with contextlib.suppress(OSError):
                        path.rmdir()
                        removed.append(path.name)
    return removed


def _parents() -> list[Path]:
    if (ROOT / "cgroup.controllers").exists():
        return [_own_cgroup("") / GROUP]
    return [_own_cgroup(name) / GROUP for name in ("memory", "pids")]


def _own_cgroup(controller: str) -> Path:
    """Where this process sits in the hierarchy of `controller` ("" for v2), as a path under /sys/fs/cgroup."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, relative = line.split(":", 2)
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            base = ROOT if controller == "" else ROOT / controller
            return base / relative.lstrip("/")
    raise OSError(2, f"this process is in no {controller or 'v2'} cgroup", "/proc/self/cgroup")


def _create(path: Path, enable: tuple[str, ...] = ()) -> None:
    path.mkdir(exist_ok=True)
    if enable:
        wanted = " ".join(f"+{name}" for name in enable)
        with contextlib.suppress(OSError):  # already enabled, or delegated by the parent
            _write(path / "cgroup.subtree_control", wanted)


def _write(path: Path, text: str) -> None:
    with path.open("w") as handle:
        handle.write(text)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def self_check() -> str | None:
    """None when VMMs can be confined here; otherwise why not (for lg doctor)."""
    try:
        parents = _parents()
    except OSError as error:
        return str(error)
    for parent in parents:
        if not os.access(parent.parent, os.W_OK):
            return f"{parent.parent} is not writable"
    return None
