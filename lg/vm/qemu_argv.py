"""The QEMU command line of a microVM, and the files it names in the VM's private run directory.

qemu runs in that directory (`-chroot .`), so every path it is given for its own files is relative to it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

from lg.vm.api import Accelerator, BootFailed, VmSpec

SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
AGENT_SOCKET = "agent.sock"
QMP_SOCKET = "qmp.sock"
CONSOLE_LOG = "console.log"
QEMU_LOG = "qemu.log"
OVERLAY = "overlay.qcow2"
RAM_BACKEND = "lg-ram"


def qemu_argv(binary: str, spec: VmSpec, accelerator: Accelerator, cmdline: str, overlay: bool) -> list[str]:
    """The qemu command line; paths are relative to the VM's run directory (qemu runs there)."""
    image = spec.image
    machine = "microvm,x-option-roms=off,isa-serial=on,rtc=off"
    argv = [
        binary,
        "-M", machine + (f",memory-backend={RAM_BACKEND}" if spec.ram_file is not None else ""),
        "-accel", accelerator,
        # ARAT (an always-running APIC timer) lets the guest kernel stop its tick when idle; without it the
        # timer ran periodically at 250 Hz, and an idle VM cost its VMM 7% of a host core under TCG (1.4%).
        "-cpu", "qemu64,+arat",
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-sandbox", SANDBOX, "-chroot", ".",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", cmdline,
        "-chardev", f"socket,id=agent,path={AGENT_SOCKET},server=on,wait=off",
        "-device", "virtio-serial-device",
        "-device", "virtserialport,chardev=agent,name=lg.agent",
        "-chardev", f"file,id=console,path={CONSOLE_LOG}",
        "-serial", "chardev:console",
        "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
    ]
    if spec.ram_file is not None:
        argv += ["-object", ram_backend(spec.memory_mib, spec.ram_file, shared=True)]
    if image.rootfs is not None:
        drive = f"id=root,file={OVERLAY},format=qcow2,if=none" if overlay else (
            f"id=root,file={image.rootfs},format=raw,if=none,snapshot=on"
        )
        argv += ["-drive", drive, "-device", "virtio-blk-device,drive=root"]
    return argv


def ram_backend(memory_mib: int, path: Path, shared: bool) -> str:
    """Guest RAM in a file: shared (a template writes its RAM there) or private (a clone maps the template's
    file copy-on-write: its writes never reach the file)."""
    if "," in str(path):
        raise BootFailed(f"a RAM file path may not contain a comma (QEMU option syntax): {path}")
    return (f"memory-backend-file,id={RAM_BACKEND},size={memory_mib}M,mem-path={path},"
            f"share={'on' if shared else 'off'}")


def create_overlay(run_dir: Path, base: Path) -> bool:
    """A copy-on-write qcow2 overlay over the read-only base image; False if qemu-img is missing."""
    tool = shutil.which("qemu-img")
    if tool is None:
        return False
    done = subprocess.run(
        [tool, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base.resolve()), str(run_dir / OVERLAY)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        raise BootFailed(f"cannot create the disk overlay over {base}: {done.stderr.strip()}")
    return True


def option_int(argv: list[str], option: str, default: int) -> int:
    """The number after `option` on a qemu command line (`-m 512`, `-smp 2`)."""
    with contextlib.suppress(ValueError, IndexError):
        return int(argv[argv.index(option) + 1].split(",")[0])
    return default
