"""Egress allow-lists: a VM's one NIC, in a network namespace of its own, passing only declared destinations.

Layout for a VM with an allow-list (a VM without one gets no NIC at all):

    guest eth0 10.213.0.2/30 ── tap0 (10.213.0.1) [netns lgvm-N] up0 (10.214.x.2/30) ── lgu-N (10.214.x.1) host
                                         nftables: forward only to the allow-list

The filter sits in the VM's own namespace, which the guest cannot reach or change: its forward chain accepts
new connections from tap0 only to the declared (address, protocol, port) triples and rejects the rest (the
guest sees "no route to host" at once instead of a timeout; a counter records how many it tried). Nothing may
reach the namespace itself from the guest, so there is no DNS server to ask: names in the allow-list are
resolved on the host when the VM starts, pinned in the filter, and written to the guest's /etc/hosts; every
other name fails to resolve, which also closes DNS as a way to leak data. IPv4 only: the guest has no IPv6.

The host forwards and masquerades the namespaces' traffic (`table ip luminaguard`; `net.ipv4.ip_forward` is
turned on if it was off, as Docker and libvirt do) and drops traffic between two VMs' namespaces. Needs root,
`nft` (Debian's nftables) and /dev/net/tun; without them a step that asks for network is refused (exit 5).
Links and namespaces are made with pyroute2; the filter is nftables' own language, loaded with `nft -f -`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from lg.errors import EnvironmentUnfit
from lg.vm.api import EgressRule, NetworkSpec

NETNS_DIR = Path("/run/netns")
STATE_DIR = Path("/run/luminaguard/net")  # one owner file per namespace; the allocation lock
NETNS_PREFIX = "lgvm-"
HOST_LINK_PREFIX = "lgu-"
TAP = "tap0"
UPLINK = "up0"
GUEST_ADDRESS = "10.213.0.2/30"  # the same in every VM: each namespace is its own world
GATEWAY = "10.213.0.1"
UPLINKS = ipaddress.ip_network("10.214.0.0/16")  # a /30 per VM between its namespace and the host
MAX_VMS = UPLINKS.num_addresses // 4
HOST_TABLE = "luminaguard"
CLONE_NEWNET = 0x40000000
NFT_FIX = "apt-get install nftables (Debian), or run scripts/setup"
ORPHAN_SECONDS = 60.0  # a namespace whose creator died before writing its owner file


@dataclass(frozen=True)
class VmNetwork:
    """The namespace, links and filter made for one VM; `release` removes them all."""

    index: int
    spec: NetworkSpec

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.index}"

    @property
    def host_link(self) -> str:
        return f"{HOST_LINK_PREFIX}{self.index}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def mac(self) -> str:
        return f"52:54:00:10:{self.index >> 8 & 0xFF:02x}:{self.index & 0xFF:02x}"

    def qemu_args(self) -> list[str]:
        return ["-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=net0,mac={self.mac}"]

    def guest_settings(self) -> dict[str, Any]:
        """What the guest agent's `network` request configures (lg.guest.system.configure_network)."""
        return {"address": GUEST_ADDRESS, "gateway": GATEWAY, "hosts": [list(pair) for pair in self.spec.hosts]}

    def denied_attempts(self) -> int | None:
        """Packets the filter rejected so far (attempts to reach a destination not on the list)."""
        done = _nft(["-j", "list", "counter", "inet", "lg", "denied"], netns=self.netns, check=False)
        if done.returncode != 0:
            return None
        with contextlib.suppress(ValueError, KeyError, TypeError, StopIteration):
            items = json.loads(done.stdout)["nftables"]
            return int(next(item["counter"]["packets"] for item in items if "counter" in item))
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "allow-list",
            "allow": [describe_rule(rule) for rule in self.spec.allow],
            "dns": "none: only the allow-list's names resolve (pinned in the guest's /etc/hosts)",
            "namespace": self.netns,
            "filter": "nftables in the VM's own network namespace: new connections to the allow-list only",
        }

    def release(self) -> None:
        _remove_namespace(self.index)


def describe_rule(rule: EgressRule) -> str:
    ports = ",".join(str(port) for port in rule.ports) if rule.ports else "all ports"
    return f"{rule.network} {rule.protocol} {ports}"


# --- setting up -------------------------------------------------------------------------------------------


def attach(spec: NetworkSpec) -> VmNetwork:
    """A namespace with a tap device for the VM, its uplink to the host, and the allow-list filter."""
    check_host()
    ensure_host_rules()
    with _allocation_lock():
        reap()
        index = _free_index()
        _create_namespace(index)
    network = VmNetwork(index, spec)
    try:
        _build_links(network)
        _nft(["-f", "-"], netns=network.netns, stdin=namespace_ruleset(spec))
    except BaseException:
        network.release()
        raise
    return network


def check_host() -> None:
    if os.geteuid() != 0:
        raise EnvironmentUnfit("a network allow-list needs root (network namespaces, tap devices, nftables)",
                               fix="run lg as root, or use `network: none`")
    if shutil.which("nft") is None:
        raise EnvironmentUnfit("a network allow-list needs nft, which is not installed", fix=NFT_FIX)
    if not Path("/dev/net/tun").exists():
        raise EnvironmentUnfit("a network allow-list needs /dev/net/tun, which this host lacks",
                               fix="modprobe tun")


def enter_namespace(netns_fd: int) -> None:
    """For a preexec_fn: move the child (the VMM) into the VM's namespace, where its tap device is."""
    if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
        os._exit(125)


_libc = ctypes.CDLL(None, use_errno=True)


def namespace_ruleset(spec: NetworkSpec) -> str:
    """The VM namespace's nftables ruleset. Addresses and ports come validated (ipaddress, int), so the text
    cannot carry anything but what the allow-list says."""
    accepts = [f'    iifname "{TAP}" oifname "{UPLINK}" {_match(rule)} accept' for rule in spec.allow]
    return "\n".join([
        "table inet lg {",
        "  counter denied {}",
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
        "    ct state established,related accept",
        "    meta nfproto ipv6 drop",
        *accepts,
        f'    iifname "{TAP}" counter name denied reject with icmpx type admin-prohibited',
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        '    iifname "lo" accept',
        "    ct state established,related accept",
        f'    iifname "{TAP}" counter name denied reject with icmpx type admin-prohibited',
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    oifname "{UPLINK}" masquerade',
        "  }",
        "}",
        "",
    ])


def _match(rule: EgressRule) -> str:
    network = ipaddress.IPv4Network(rule.network)  # raises on anything but an IPv4 network
    words = [f"ip daddr {network}"]
    if rule.protocol != "any":
        words.append(f"meta l4proto {rule.protocol}")
        if rule.ports:
            words.append(f"{rule.protocol} dport {{ {', '.join(str(int(port)) for port in rule.ports)} }}")
    return " ".join(words)


def host_ruleset() -> str:
    return "\n".join([
        f"table ip {HOST_TABLE}",
        f"flush table ip {HOST_TABLE}",
        f"table ip {HOST_TABLE} {{",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f'    ip saddr {UPLINKS} oifname != "{HOST_LINK_PREFIX}*" masquerade',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f'    iifname "{HOST_LINK_PREFIX}*" oifname "{HOST_LINK_PREFIX}*" drop',
        "  }",
        "}",
        "",
    ])


def ensure_host_rules() -> None:
    """Forwarding and masquerading for the VM namespaces' uplinks (idempotent: the table is replaced)."""
    _nft(["-f", "-"], stdin=host_ruleset())
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    if forward.read_text().strip() != "1":
        forward.write_text("1\n")


def _build_links(network: VmNetwork) -> None:
    from pyroute2 import IPRoute, NetNS  # noqa: PLC0415 - only steps with network need it

    base = int(UPLINKS.network_address) + 4 * network.index  # the VM's /30: .1 is the host's end, .2 its own
    host_address, namespace_address = str(ipaddress.IPv4Address(base + 1)), str(ipaddress.IPv4Address(base + 2))
    with IPRoute() as host:
        # A link of this name outlived its namespace's name: a process still inside a namespace whose name was
        # removed keeps its veth pair alive. The index is ours now (chosen under the allocation lock), so the
        # old pair is stale; deleting the host end removes both ends.
        for stale in host.link_lookup(ifname=network.host_link):
            host.link("del", index=stale)
        host.link("add", ifname=network.host_link, kind="veth",
                  peer={"ifname": UPLINK, "net_ns_fd": network.netns})
        link = host.link_lookup(ifname=network.host_link)[0]
        host.addr("add", index=link, address=host_address, prefixlen=30)
        host.link("set", index=link, state="up")
    with NetNS(network.netns) as namespace:
        namespace.link("add", ifname=TAP, kind="tuntap", mode="tap")
        for name, address in ((UPLINK, namespace_address), (TAP, GATEWAY)):
            link = namespace.link_lookup(ifname=name)[0]
            namespace.addr("add", index=link, address=address, prefixlen=30)
            namespace.link("set", index=link, state="up")
        namespace.link("set", index=namespace.link_lookup(ifname="lo")[0], state="up")
        namespace.route("add", dst="0.0.0.0/0", gateway=host_address)
    for setting in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1"):
        _run(["ip", "netns", "exec", network.netns, "sysctl", "-q", "-w", setting])


# --- namespaces, owners and reaping -----------------------------------------------------------------------


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    with (STATE_DIR / "lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_index() -> int:
    taken = {path.name for path in NETNS_DIR.iterdir()} if NETNS_DIR.is_dir() else set()
    for index in range(MAX_VMS):
        if f"{NETNS_PREFIX}{index}" not in taken:
            return index
    raise EnvironmentUnfit(f"all {MAX_VMS} VM network namespaces are in use", fix="lg doctor; remove stale lgvm-*")


def _create_namespace(index: int) -> None:
    from pyroute2 import netns  # noqa: PLC0415

    name = f"{NETNS_PREFIX}{index}"
    netns.create(name)
    owner = {"pid": os.getpid(), "started": psutil.Process().create_time(), "created": time.time()}
    (STATE_DIR / f"{name}.json").write_text(json.dumps(owner))


def _remove_namespace(index: int) -> None:
    """Deleting the namespace deletes the tap and the veth pair with it (and so the host's end)."""
    from pyroute2 import netns  # noqa: PLC0415

    name = f"{NETNS_PREFIX}{index}"
    with contextlib.suppress(OSError):
        netns.remove(name)
    with contextlib.suppress(OSError):
        (STATE_DIR / f"{name}.json").unlink()


def reap() -> list[str]:
    """Remove namespaces whose lg process is gone (a crash, kill -9); their VMM died with lg."""
    if not NETNS_DIR.is_dir():
        return []
    reaped = []
    for path in NETNS_DIR.glob(f"{NETNS_PREFIX}*"):
        suffix = path.name.removeprefix(NETNS_PREFIX)
        if suffix.isdigit() and not _owner_alive(path.name):
            _remove_namespace(int(suffix))
            reaped.append(path.name)
    return reaped


def _owner_alive(name: str) -> bool:
    try:
        owner = json.loads((STATE_DIR / f"{name}.json").read_text())
        pid, started = int(owner["pid"]), float(owner["started"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return time.time() - (NETNS_DIR / name).stat().st_mtime < ORPHAN_SECONDS
        except OSError:
            return False
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


# --- tools ------------------------------------------------------------------------------------------------


def _nft(args: list[str], *, netns: str | None = None, stdin: str | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["nft", *args] if netns is None else ["ip", "netns", "exec", netns, "nft", *args]
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise EnvironmentUnfit(f"nftables refused the VM network filter: {done.stderr.strip()}", fix=NFT_FIX)
    return done


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise EnvironmentUnfit(f"cannot set up the VM network ({' '.join(argv)}): {done.stderr.strip()}")


Resolver = Callable[[str], list[str]]


def resolve_ipv4(name: str) -> list[str]:
    """The IPv4 addresses of a host name, as the host resolves it."""
    import socket  # noqa: PLC0415

    try:
        infos = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos if isinstance(info[4][0], str)})
