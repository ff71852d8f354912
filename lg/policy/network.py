"""Network use, by what a command does (fetch, upload, raw connection) and where (the hosts it names), and the
network a step's VM profile gives it (its `network` relaxations: the allow-list, or none at all).

A fetch from a host the profile allows is what build steps do (install from declared registries); an upload or a
raw connection can carry the workspace away whenever the step has any network. Without a profile (`lg policy
explain` of a bare command) the network is unknown, and unknown is graded as "some network": fail closed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lg.policy.programs import option_values

UPLOAD_CURL = frozenset({"-d", "--data", "--data-binary", "--data-raw", "--data-urlencode", "--data-ascii", "-F",
                         "--form", "--form-string", "-T", "--upload-file", "--json"})
SENDING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RAW_SCHEMES = frozenset({"telnet", "dict", "gopher", "ldap", "ldaps", "smtp", "smtps", "mqtt", "tftp", "scp", "sftp"})
RAW_PROGRAMS = frozenset({"nc", "ncat", "netcat", "socat", "telnet", "ssh", "http.server", "SimpleHTTPServer",
                          "websocat", "mosh"})
INSTALLS: dict[str, frozenset[str]] = {
    "pip": frozenset({"install", "download", "wheel"}), "pip3": frozenset({"install", "download", "wheel"}),
    "npm": frozenset({"install", "i", "ci", "update", "add"}), "yarn": frozenset({"install", "add", "upgrade"}),
    "pnpm": frozenset({"install", "i", "add", "update"}), "gem": frozenset({"install", "fetch"}),
    "bundle": frozenset({"install", "update"}), "cargo": frozenset({"install", "fetch", "update"}),
    "go": frozenset({"get", "install", "download"}), "composer": frozenset({"install", "require", "update"}),
    "apt-get": frozenset({"install", "update", "upgrade", "dist-upgrade"}),
    "apt": frozenset({"install", "update", "upgrade"}), "apk": frozenset({"add", "update"}),
    "dnf": frozenset({"install"}), "yum": frozenset({"install"}), "brew": frozenset({"install"}),
    "conda": frozenset({"install", "create"}), "mamba": frozenset({"install", "create"}),
    "poetry": frozenset({"install", "add", "update"}), "pipenv": frozenset({"install", "sync"}),
    "uv": frozenset({"sync", "add", "pip"}), "docker": frozenset({"pull"}), "podman": frozenset({"pull"}),
}
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/]*@)?(\[[^\]]+\]|[^:/?#]+)")
SCP_REMOTE = re.compile(r"^(?:[^@/:]+@)?([A-Za-z0-9][A-Za-z0-9.-]*):(?!//)")


@dataclass(frozen=True)
class NetworkScope:
    """The network a step's VM profile gives it. `allowed` None: not known (graded as some network)."""

    allowed: tuple[str, ...] | None = None  # allow-list labels, as relaxations spell them ("pypi.org:443")

    @property
    def known(self) -> bool:
        return self.allowed is not None

    @property
    def any(self) -> bool:
        return self.allowed is None or bool(self.allowed)

    def allows(self, host: str) -> bool:
        if self.allowed is None:
            return False
        return any(_entry_allows(entry, host) for entry in self.allowed)

    @classmethod
    def of(cls, labels: Iterable[str]) -> NetworkScope:
        return cls(tuple(labels))


UNKNOWN = NetworkScope()
NONE = NetworkScope(())


def _entry_allows(label: str, host: str) -> bool:
    """Does an allow-list entry ("pypi.org:443", "192.0.2.0/24 (tcp)") cover `host`?"""
    written = label.split(" (", 1)[0]
    target = written.rsplit(":", 1)[0].lower().rstrip(".")
    host = host.strip("[]").lower().rstrip(".")
    if target == host:
        return True
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(target, strict=False)
    except ValueError:
        return False


def network_use(program: str, words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kinds, hosts): fetch / upload / raw, and the hosts named, for one command."""
    hosts = tuple(host for word in words if (host := host_of(word, program)) is not None)
    if program == "curl":
        return _curl(words), hosts
    if program == "wget":
        sends = any(w.startswith(("--post-data", "--post-file", "--body-data", "--body-file")) for w in words)
        method = [value.upper() for _o, value in option_values(words, {"--method"})]
        return ("upload",) if sends or set(method) & SENDING_METHODS else ("fetch",), hosts
    if program in RAW_PROGRAMS or (program == "openssl" and words[:1] in (("s_client",), ("s_server",))):
        return ("raw",), hosts
    if program in ("scp", "rsync", "sftp"):
        return _copy(words, program), hosts
    if program == "git":
        return _git(words), hosts
    positionals = [w for w in words if not w.startswith("-")]
    if program in INSTALLS and positionals[:1] and positionals[0] in INSTALLS[program]:
        return ("fetch",), hosts
    if (program == "twine" and positionals[:1] == ["upload"]) or (
            program in ("npm", "yarn", "pnpm", "cargo", "gem", "docker", "podman")
            and positionals[:1] and positionals[0] in ("publish", "push")):
        return ("upload",), hosts
    return (), ()


def _curl(words: tuple[str, ...]) -> tuple[str, ...]:
    flags = {w.split("=", 1)[0] for w in words if w.startswith("-")}
    methods = {value.upper() for _o, value in option_values(words, {"-X", "--request"})}
    schemes = {w.split("://", 1)[0].lower() for w in words if "://" in w}
    if schemes & RAW_SCHEMES:
        return ("raw",)
    if flags & UPLOAD_CURL or methods & SENDING_METHODS or any(re.match(r"^-[a-zA-Z]*[dFT]$", w) for w in words):
        return ("upload",)
    return ("fetch",) if schemes - {"file"} or not schemes else ()


def _copy(words: tuple[str, ...], program: str) -> tuple[str, ...]:
    positionals = [w for w in words if not w.startswith("-")]
    remote = [bool(SCP_REMOTE.match(w) or "://" in w) for w in positionals]
    if not any(remote):
        return ()
    return ("upload",) if remote[-1] and not all(remote) else ("fetch",)


def _git(words: tuple[str, ...]) -> tuple[str, ...]:
    positionals = [w for w in words if not w.startswith("-")]
    subcommand = positionals[0] if positionals else ""
    if subcommand in ("push", "send-email", "request-pull"):
        return ("upload",)
    if subcommand in ("clone", "fetch", "pull", "ls-remote", "submodule", "remote"):
        return ("fetch",)
    return ()


def host_of(word: str, program: str = "") -> str | None:
    """The host a word names: a URL's, or scp/rsync/git's user@host:path."""
    found = URL.match(word)
    if found:
        scheme = word.split("://", 1)[0].lower()
        return None if scheme == "file" else found.group(1).lower()
    if program in ("scp", "rsync", "sftp", "git", "ssh") or "@" in word:
        remote = SCP_REMOTE.match(word)
        if remote and not word.startswith(("/", "./")):
            return remote.group(1).lower()
    if program == "ssh" and re.match(r"^[A-Za-z0-9_.-]*@?[A-Za-z0-9-]+\.[A-Za-z0-9.-]+$", word):
        return word.rsplit("@", maxsplit=1)[-1].lower()
    return None
