"""QEMU snapshots: save a running VM's full state to a directory, and resume clones from it.

A snapshot directory holds `memory.state` (the migration stream), `disk.qcow2` (the VM's disk overlay, when
it has a root disk) and `snapshot.json` (the qemu command line to restore with, the image digest, the
accelerator). Saving migrates to a file descriptor handed over QMP (`getfd`), because `-sandbox spawn=deny`
forbids the `exec:` migration URI. Restoring starts the same command line with `-incoming fd:N`, resumes
it, and resyncs the guest's clock and RNG: every clone of a snapshot wakes up with the same time and the
same random state otherwise. Each clone gets its own run directory, sockets and disk overlay (backed by the
snapshot's disk, which therefore must not change).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from lg.vm.api import BootFailed, VmError, VmSpec
from lg.vm.qemu_argv import OVERLAY, RAM_BACKEND, ram_backend
from lg.vm.qemu_vm import QemuVm
from lg.vm.qmp import QmpClient, QmpError
from lg.vm.rundir import create_run_dir

META = "snapshot.json"
MEMORY = "memory.state"
DISK = "disk.qcow2"
MIGRATION_BANDWIDTH = 1 << 40  # bytes/s: no throttle (the default is 32 MiB/s)
SAVE_TIMEOUT = 300.0
RESUME_TIMEOUT = 60.0


def save(vm: QemuVm, path: Path) -> None:
    """Save a template (its RAM in a shared file under `path`: the stream holds the devices only) or any other
    VM, a clone restored from a template included (its RAM, a private mapping, goes into the stream).

    x-ignore-shared changes the stream's format, so it must be set alike on both sides: on for a template's
    save and its clones' restores, and explicitly off for the save of a clone, whose QEMU still has it on from
    its own restore, and whose snapshot restores without it (`_portable_argv`)."""
    path.mkdir(parents=True, exist_ok=True)  # a template's RAM file may already live there
    ram_file = _ram_file(vm.argv)
    shared = ram_file is not None and _ram_shared(vm.argv)
    try:
        qmp = vm.qmp()
    except QmpError as error:
        raise VmError(f"VM {vm.id}: cannot save a snapshot: {error}") from error
    try:
        qmp.execute("stop")
        qmp.execute("migrate-set-parameters", {"max-bandwidth": MIGRATION_BANDWIDTH})
        if ram_file is not None:
            # A template's RAM stays in its shared file: the stream holds the devices' state only.
            qmp.execute("migrate-set-capabilities",
                        {"capabilities": [{"capability": "x-ignore-shared", "state": shared}]})
        with (path / MEMORY).open("wb") as memory:
            qmp.execute("getfd", {"fdname": "lg-snapshot"}, fds=[memory.fileno()])
        qmp.execute("migrate", {"uri": "fd:lg-snapshot"})
        _wait_for_migration(qmp, SAVE_TIMEOUT)
    except QmpError as error:
        shutil.rmtree(path, ignore_errors=True)
        raise VmError(f"VM {vm.id}: saving the snapshot failed: {error}") from error
    finally:
        qmp.close()
    has_disk = (vm.run_dir / OVERLAY).exists()
    if has_disk:
        shutil.copyfile(vm.run_dir / OVERLAY, path / DISK)
    meta = {
        "backend": "qemu", "argv": vm.argv if shared else _portable_argv(vm.argv), "accelerator": vm.accelerator,
        "image_digest": vm.image_digest, "disk": has_disk, "saved_at": time.time(),
        # The RAM file, relative to the snapshot directory (which may be renamed after saving).
        "ram_file": _relative_ram_file(ram_file, path) if shared else None,
    }
    (path / META).write_text(json.dumps(meta, indent=2))


def _wait_for_migration(qmp: QmpClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            detail = info.get("error-desc")
            raise QmpError(f"migration {status}" + (f": {detail}" if detail else ""))
        time.sleep(0.02)
    raise QmpError(f"migration did not complete within {timeout:.0f}s")


def load_meta(snapshot: Path) -> dict[str, Any]:
    try:
        meta = json.loads((snapshot / META).read_text())
    except (OSError, ValueError) as error:
        raise BootFailed(f"{snapshot} is not a snapshot: {error}") from error
    if not isinstance(meta, dict) or meta.get("backend") != "qemu" or not isinstance(meta.get("argv"), list):
        raise BootFailed(f"{snapshot} is not a QEMU snapshot")
    return meta


def restore(snapshot: Path, spec: VmSpec, run_parent: Path) -> QemuVm:
    meta = load_meta(snapshot)
    if meta.get("image_digest") != spec.image.digest:
        raise BootFailed(f"snapshot {snapshot} was taken from image {meta.get('image_digest')}, "
                         f"not {spec.image.digest}")
    accelerator = meta.get("accelerator")
    if accelerator not in ("kvm", "tcg"):
        raise BootFailed(f"snapshot {snapshot} names no accelerator")
    vm_id = f"vm-{secrets.token_hex(5)}"
    vm = QemuVm(vm_id, accelerator, create_run_dir(run_parent, vm_id))
    vm.image_digest = spec.image.digest
    try:
        if meta.get("disk"):
            _overlay_on(snapshot / DISK, vm.run_dir / OVERLAY)
        argv, ram_file = _restore_argv(meta, snapshot)
        memory = os.open(snapshot / MEMORY, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if ram_file is None:
                vm.start([*argv, "-incoming", f"fd:{memory}"], pass_fds=(memory,))
            else:
                vm.start([*argv, "-incoming", "defer"], pass_fds=(memory,))
                _incoming_ignoring_shared_ram(vm, memory, RESUME_TIMEOUT)
        finally:
            os.close(memory)
        _resume(vm, RESUME_TIMEOUT)
        vm.wait_ready(spec.boot_timeout)
        vm.resync()
    except BaseException:
        vm.destroy()
        raise
    return vm


def _ram_file(argv: list[str]) -> Path | None:
    for option in argv:
        if option.startswith(f"memory-backend-file,id={RAM_BACKEND},"):
            fields = dict(part.split("=", 1) for part in option.split(",")[1:] if "=" in part)
            return Path(fields["mem-path"])
    return None


def _ram_shared(argv: list[str]) -> bool:
    return any(option.startswith(f"memory-backend-file,id={RAM_BACKEND},") and option.endswith(",share=on")
               for option in argv)


def _portable_argv(argv: list[str]) -> list[str]:
    """The command line a snapshot with its RAM in the stream restores under: without the `-incoming` of the
    restore that made this VM, and with its RAM (a private mapping of a template's file) in anonymous memory
    of the same backend id and size, so that the stream's RAM block matches it."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "-incoming":
            next(words, None)
            continue
        if word.startswith(f"memory-backend-file,id={RAM_BACKEND},"):
            fields = dict(part.split("=", 1) for part in word.split(",")[1:] if "=" in part)
            word = f"memory-backend-ram,id={RAM_BACKEND},size={fields['size']}"
        out.append(word)
    return out


def _relative_ram_file(ram_file: Path | None, snapshot: Path) -> str | None:
    if ram_file is None:
        return None
    if ram_file.parent.resolve() != snapshot.resolve():
        raise VmError(f"a template's RAM file must live in its snapshot directory {snapshot}, not {ram_file}")
    return ram_file.name


def _restore_argv(meta: dict[str, Any], snapshot: Path) -> tuple[list[str], Path | None]:
    """The saved command line, with a file-backed RAM mapped privately from where the snapshot is now."""
    argv = [str(word) for word in meta["argv"]]
    name = meta.get("ram_file")
    if name is None:
        return argv, None
    ram_file = snapshot / str(name)
    if not ram_file.is_file():
        raise BootFailed(f"snapshot {snapshot} lacks its RAM file {name}")
    memory_mib = int(argv[argv.index("-m") + 1])
    rewritten = [ram_backend(memory_mib, ram_file, shared=False) if word.startswith(
        f"memory-backend-file,id={RAM_BACKEND},") else word for word in argv]
    return rewritten, ram_file


def _incoming_ignoring_shared_ram(vm: QemuVm, memory_fd: int, timeout: float) -> None:
    """Start the deferred incoming migration with x-ignore-shared: the RAM is the template's file, mapped
    copy-on-write, so only the devices' state is read (QEMU allows a private destination since 4.1)."""
    qmp = _connect_qmp(vm, time.monotonic() + timeout)
    try:
        qmp.execute("migrate-set-capabilities",
                    {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        qmp.execute("migrate-incoming", {"uri": f"fd:{memory_fd}"})
    except QmpError as error:
        raise BootFailed(f"VM {vm.id}: cannot start restoring the snapshot: {error}") from error
    finally:
        qmp.close()


def _connect_qmp(vm: QemuVm, deadline: float) -> QmpClient:
    while True:
        vm.check_alive()
        try:
            return vm.qmp(timeout=2.0)
        except QmpError:
            if time.monotonic() > deadline:
                raise BootFailed(f"VM {vm.id}: qemu's QMP socket never answered") from None
            time.sleep(0.01)


def _overlay_on(backing: Path, overlay: Path) -> None:
    done = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing.resolve()), str(overlay)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        raise BootFailed(f"cannot create a disk overlay over {backing}: {done.stderr.strip()}")


def _resume(vm: QemuVm, timeout: float) -> None:
    """Wait for the incoming migration to finish (state `paused`), then continue the guest."""
    deadline = time.monotonic() + timeout
    qmp = _connect_qmp(vm, deadline)
    try:
        while qmp.execute("query-status").get("status") != "paused":
            vm.check_alive()
            if time.monotonic() > deadline:
                raise BootFailed(f"VM {vm.id}: restoring the snapshot did not finish in {timeout:.0f}s")
            time.sleep(0.01)
        qmp.execute("cont")
    except QmpError as error:
        raise BootFailed(f"VM {vm.id}: cannot resume the snapshot: {error}") from error
    finally:
        qmp.close()
