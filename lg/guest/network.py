"""The guest's side of an egress allow-list: address its NIC, route through the host, pin the allowed names.

The host (lg.vm.network) decides what may pass; this only makes the guest's one NIC usable. Names resolve
from /etc/hosts alone: the guest gets no DNS server, by design (see lg.vm.network).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from pathlib import Path

from lg.guest.protocol import ErrorCode, ProtocolError, get_str

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BUSYBOX = "/bin/busybox"
NIC_WAIT_SECONDS = 10.0  # the virtio_net module is loaded by init; its device may appear a moment later
RESOLV_CONF = "# lg: no DNS server. The names this step may reach are in /etc/hosts.\n"


def configure(body: dict[str, Any]) -> dict[str, Any]:
    try:
        address = ipaddress.IPv4Interface(get_str(body, "address"))
        gateway = ipaddress.IPv4Address(get_str(body, "gateway"))
        hosts = [(_hostname(pair[0]), str(ipaddress.IPv4Address(pair[1]))) for pair in body.get("hosts", [])]
    except (ValueError, TypeError, IndexError) as problem:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad network settings: {problem}") from problem
    nic = _wait_for_nic()
    _ip("link", "set", "lo", "up")
    _ip("addr", "add", str(address), "dev", nic)
    _ip("link", "set", nic, "up")
    _ip("route", "add", "default", "via", str(gateway))
    _write_hosts(hosts)
    return {"interface": nic, "address": str(address)}


def _hostname(value: object) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value) or len(value) > 253:
        raise ValueError(f"bad host name {value!r}")
    return value


def _wait_for_nic() -> str:
    deadline = time.monotonic() + NIC_WAIT_SECONDS
    while True:
        nics = sorted(name for name in os.listdir("/sys/class/net") if name != "lo")
        if nics:
            return nics[0]
        if time.monotonic() > deadline:
            raise ProtocolError(ErrorCode.FAILED, "the VM has no network device (is virtio_net in the image?)")
        time.sleep(0.05)


def _ip(*args: str) -> None:
    done = subprocess.run([BUSYBOX, "ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise ProtocolError(ErrorCode.FAILED, f"ip {' '.join(args)}: {done.stderr.strip()}")


def _write_hosts(hosts: list[tuple[str, str]]) -> None:
    lines = ["127.0.0.1\tlocalhost", *(f"{address}\t{name}" for name, address in hosts)]
    for path, text in ((Path("/etc/hosts"), "\n".join(lines) + "\n"), (Path("/etc/resolv.conf"), RESOLV_CONF)):
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
