"""Guest-wide settings: clock, entropy, hostname, power off (Linux only, root in the guest)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import time

from lg.guest.protocol import ErrorCode, ProtocolError, get_int, get_str

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
MAX_ENTROPY_BYTES = 4096


def uptime() -> float:
    try:
        with open("/proc/uptime") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1.0


def set_clock(body: dict[str, Any]) -> dict[str, Any]:
    """Set the wall clock to the host's (a restored snapshot wakes up with the time it was saved at)."""
    wanted = get_int(body, "epoch_ns")
    skew = time.time_ns() - wanted
    time.clock_settime_ns(time.CLOCK_REALTIME, wanted)
    return {"skew_ns": skew}


def reseed(body: dict[str, Any]) -> dict[str, Any]:
    """Mix host entropy into the kernel pool and force a reseed (clones of one snapshot share RNG state)."""
    try:
        entropy = bytes.fromhex(get_str(body, "entropy"))
    except ValueError as problem:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "entropy must be hex") from problem
    if not 16 <= len(entropy) <= MAX_ENTROPY_BYTES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"entropy must be 16 to {MAX_ENTROPY_BYTES} bytes")
    credited = False
    fd = os.open("/dev/urandom", os.O_WRONLY | os.O_CLOEXEC)
    try:
        info = struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy
        try:
            fcntl.ioctl(fd, RNDADDENTROPY, info)
            credited = True
        except OSError:  # not root: a plain write still mixes it in, without credit
            os.write(fd, entropy)
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)
    return {"credited": credited}


MACHINE_ID = "/etc/machine-id"


def set_identity(body: dict[str, Any]) -> dict[str, Any]:
    """A fresh hostname and machine id, and (when given) the host's clock and fresh entropy: every clone of one
    snapshot wakes up as the template otherwise. One request, because a lease waits for it."""
    answer: dict[str, Any] = {}
    if "epoch_ns" in body:
        answer.update(set_clock(body))
    if "entropy" in body:
        answer.update(reseed(body))
    hostname = get_str(body, "hostname")
    machine_id = get_str(body, "machine_id")
    if not 1 <= len(hostname) <= 63 or not all(c.isalnum() or c == "-" for c in hostname):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad hostname {hostname!r}")
    if len(machine_id) != 32 or any(c not in "0123456789abcdef" for c in machine_id):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "machine_id must be 32 lowercase hex digits")
    socket.sethostname(hostname)
    # A read-only root keeps its id; the hostname is what steps see.
    with contextlib.suppress(OSError), open(MACHINE_ID, "w") as handle:
        handle.write(machine_id + "\n")
    return {**answer, "hostname": socket.gethostname(), "machine_id": _read_machine_id()}


def _read_machine_id() -> str:
    try:
        with open(MACHINE_ID) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def boot_parameters(cmdline: str) -> dict[str, str]:
    """`lg.NAME=VALUE` words of the kernel command line."""
    found = {}
    for word in cmdline.split():
        key, sep, value = word.partition("=")
        if sep and key.startswith("lg."):
            found[key[3:]] = value
    return found


def apply_boot_settings() -> None:
    try:
        with open("/proc/cmdline") as handle:
            parameters = boot_parameters(handle.read())
    except OSError:
        return
    hostname = parameters.get("hostname")
    if hostname:
        with contextlib.suppress(OSError):
            socket.sethostname(hostname)


def power_off() -> None:
    """Power the guest off at once (the VM is throwaway): sync, then the sysrq 'o' trigger."""
    os.sync()
    try:
        with open("/proc/sysrq-trigger", "w") as trigger:
            trigger.write("o")
        time.sleep(5)
    except OSError:
        pass
    raise SystemExit(0)
