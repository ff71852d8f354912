"""Facts about the host that VM backends need, read at run time (never hard-coded)."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import signal
from collections.abc import Callable
from pathlib import Path

KVM_DEVICE = Path("/dev/kvm")
KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12
PR_SET_PDEATHSIG = 1
TSC_SYSFS = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")  # only on some kernels


def tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo"), exact: Path = TSC_SYSFS) -> int | None:
    """The host TSC rate in kHz (guests under microvm cannot calibrate it: no HPET, no PM timer)."""
    try:
        return int(exact.read_text().strip())
    except (OSError, ValueError):
        pass
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            try:
                return round(float(value) * 1000)
            except ValueError:
                return None
    return None


def kvm_device_status(device: Path = KVM_DEVICE) -> tuple[bool, str]:
    """Whether /dev/kvm exists, opens read-write and speaks the expected API (not whether guests boot)."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, f"{device} does not exist (no KVM module, or nested virtualisation is off)"
    except PermissionError:
        return False, f"{device} is not accessible to this user (add it to the 'kvm' group)"
    except OSError as problem:
        return False, f"{device} cannot be opened: {problem.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as problem:
        return False, f"{device} does not answer KVM_GET_API_VERSION: {problem.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{device} speaks KVM API {version}, expected {KVM_API_VERSION}"
    return True, f"{device} opens (KVM API {version})"


def host_fingerprint(extra: str = "") -> str:
    """Identifies this host's virtualisation setup, to key cached verdicts (a kernel upgrade resets them)."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    except OSError:
        pass
    text = "\n".join((platform.node(), platform.release(), platform.version(), model, flags, extra))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (with the pid, it identifies a process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 else None


_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when the thread that spawned it dies (even by `kill -9`).

    The kernel ties the signal to the spawning *thread*: boot VMs from a thread that lives as long as
    they do. The second check closes the race of a parent that died before prctl ran.
    """
    prctl = _libc.prctl

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:
            os._exit(126)

    return preexec


def session_keeps_nice() -> None:
    """A preexec_fn part, after setsid: give the child's new session (its scheduler autogroup) the nice value
    of the thread that spawned it. Under sched_autogroup the CPU is shared between sessions first, so a VMM
    started niced by a pool refill would otherwise compete as an equal with the VM running a step."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= 0:
        return
    try:
        fd = os.open("/proc/self/autogroup", os.O_WRONLY)
    except OSError:
        return  # no autogroup support: thread nice values apply as they are
    try:
        os.write(fd, str(nice).encode())
    except OSError:
        pass
    finally:
        os.close(fd)

