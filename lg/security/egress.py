"""The `network` key of a VM profile: `none` (no network device at all), or an egress allow-list.

    network:
      allow:
        - host: deb.debian.org      # a name (resolved on the host when the VM starts) or an IPv4 address
          ports: [80, 443]          # default: every port
        - cidr: 192.0.2.0/24
          protocol: udp             # tcp (default when ports are given), udp, or any

Every entry is checked when the profile loads (exit 2 naming the file, line and key); names are resolved when
a VM starts, and a name that does not resolve refuses the step (exit 5) rather than run with a hole in the list.
The guest has no DNS server: the names of the list are pinned in its /etc/hosts (see lg.vm.network).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from lg.config.yamlsource import SourceDoc
from lg.errors import EnvironmentUnfit
from lg.vm.api import EgressRule, NetworkSpec

HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
                      r"[A-Za-z0-9])?)*\.?$")
Protocol = Literal["tcp", "udp", "any"]


@dataclass(frozen=True)
class AllowEntry:
    """One destination as written: a host name, or an IPv4 network (a bare address is a /32)."""

    host: str | None
    network: str | None
    protocol: Protocol
    ports: tuple[int, ...]
    where: str  # "profiles/vm/build.yaml:12" for errors raised when the name is resolved

    @property
    def label(self) -> str:
        target = self.host or self.network or "?"
        return f"{target}:{','.join(map(str, self.ports))}" if self.ports else f"{target} ({self.protocol})"


@dataclass(frozen=True)
class Egress:
    allow: tuple[AllowEntry, ...]

    def to_spec(self, resolve: Callable[[str], list[str]]) -> NetworkSpec:
        rules: list[EgressRule] = []
        hosts: list[tuple[str, str]] = []
        for entry in self.allow:
            if entry.network is not None:
                rules.append(EgressRule(entry.network, entry.protocol, entry.ports))
                continue
            host = entry.host or ""
            addresses = resolve(host)
            if not addresses:
                raise EnvironmentUnfit(f"{entry.where}: network.allow host {host!r} does not resolve to an "
                                       "IPv4 address on this host; refusing to run with a hole in the allow-list",
                                       fix="check the name, or list its address as `cidr:`")
            for address in addresses:
                rules.append(EgressRule(f"{address}/32", entry.protocol, entry.ports))
                hosts.append((host.rstrip("."), address))
        return NetworkSpec(tuple(rules), tuple(hosts))


def network_schema() -> dict[str, Any]:
    entry = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "host": {"type": "string", "minLength": 1,
                     "description": "a host name (resolved on the host when the VM starts) or an IPv4 address"},
            "cidr": {"type": "string", "minLength": 1, "description": "an IPv4 network, e.g. 192.0.2.0/24"},
            "protocol": {"enum": ["tcp", "udp", "any"],
                         "description": "tcp (default with ports), udp, or any (default without ports)"},
            "ports": {"type": "array", "minItems": 1, "uniqueItems": True,
                      "items": {"type": "integer", "minimum": 1, "maximum": 65535}},
        },
        "oneOf": [{"required": ["host"]}, {"required": ["cidr"]}],
    }
    return {
        "description": "none (default): no network device at all; or an egress allow-list",
        "oneOf": [
            {"const": "none"},
            {"type": "object", "additionalProperties": False, "required": ["allow"],
             "properties": {"allow": {"type": "array", "minItems": 1, "items": entry}}},
        ],
    }


def parse_network(doc: SourceDoc) -> Egress | None:
    """The profile's network, checked beyond the schema (addresses, names, ports without a protocol)."""
    raw = doc.data.get("network", "none")
    if raw == "none":
        return None
    entries = []
    for index, item in enumerate(raw["allow"]):
        entries.append(_entry(doc, ("network", "allow", index), item))
    return Egress(tuple(entries))


def _entry(doc: SourceDoc, path: tuple[str | int, ...], item: dict[str, Any]) -> AllowEntry:
    ports = tuple(item.get("ports", ()))
    protocol = cast(Protocol, item.get("protocol", "tcp" if ports else "any"))
    if protocol == "any" and ports:
        raise doc.error((*path, "protocol"), "ports need a protocol: tcp or udp")
    host, network = item.get("host"), None
    target = host if host is not None else item["cidr"]
    key = "host" if host is not None else "cidr"
    try:
        address = ipaddress.ip_network(target, strict=False)
    except ValueError:
        address = None
    if address is not None:
        if address.version != 4:
            raise doc.error((*path, key), f"{target!r} is IPv6: the guest network is IPv4 only")
        host, network = None, str(address)
    elif key == "cidr":
        raise doc.error((*path, key), f"{target!r} is not an IPv4 network (such as 192.0.2.0/24)")
    elif not HOSTNAME.match(target):
        raise doc.error((*path, key), f"{target!r} is neither a host name nor an IPv4 address")
    where = _where(doc, (*path, key))
    return AllowEntry(host, network, protocol, ports, where)


def _where(doc: SourceDoc, path: tuple[str | int, ...]) -> str:
    return str(doc.location(path))
