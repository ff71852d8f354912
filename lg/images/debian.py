"""Debian packages for guest images: resolve a dependency closure, pin exact versions, download, unpack.

Everything goes through apt's own tools (apt-cache, apt-get download, dpkg-deb): no mirror URLs are built by
hand and nothing is installed on the host. Downloaded .deb files are kept in the cache by file name (which
includes the version) and checked against the SHA256 in apt's index before use.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lg.errors import EnvironmentUnfit

_VIRTUAL = re.compile(r"^<.*>$")


@dataclass(frozen=True, order=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    sha256: str
    filename: str  # the pool path in the archive; its basename is the downloaded file's name

    @property
    def deb_name(self) -> str:
        """The name `apt-get download` gives the file (the epoch's colon URL-encoded, unlike the pool path)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise EnvironmentUnfit(f"{argv[0]} is not installed", fix="run scripts/setup (Debian 12 with apt)")
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EnvironmentUnfit(f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-800:]}",
                               fix="run `apt-get update` (the package lists may be missing or stale)")
    return done.stdout


def dependency_closure(roots: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Every real package the roots need (Depends and Pre-Depends, recursively), minus `exclude`."""
    output = _run([
        "apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
        "--no-breaks", "--no-replaces", "--no-enhances", *roots,
    ])
    names = {line.strip() for line in output.splitlines() if line and not line.startswith(" ")}
    wanted = sorted(name for name in names if not _VIRTUAL.match(name) and ":" not in name)
    excluded = set(exclude)
    return [name for name in wanted if name not in excluded]


def package_metadata(names: Iterable[str]) -> list[DebPackage]:
    """The candidate version of each package, with the SHA256 apt's signed index gives for its .deb."""
    names = list(names)
    output = _run(["apt-cache", "show", "--no-all-versions", *names])
    packages = []
    for stanza in output.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" ")
        )
        if "Package" in fields:
            packages.append(DebPackage(fields["Package"], fields["Version"], fields.get("Architecture", "all"),
                                       fields.get("SHA256", ""), fields.get("Filename", "")))
    missing = set(names) - {package.name for package in packages}
    if missing:
        raise EnvironmentUnfit(f"no Debian package named {', '.join(sorted(missing))}",
                               fix="check the recipe's package names; run `apt-get update`")
    return sorted(packages)


def resolve_kernel_package(name: str) -> str:
    """A metapackage (linux-image-cloud-amd64) resolved to the versioned image package it depends on."""
    if re.match(r"^linux-image-\d", name):
        return name
    output = _run(["apt-cache", "depends", "--no-recommends", "--no-suggests", name])
    for line in output.splitlines():
        match = re.match(r"^\s+Depends: (linux-image-\d\S*)$", line)
        if match:
            return match.group(1)
    raise EnvironmentUnfit(f"{name} does not depend on a versioned linux-image package",
                           fix="name a kernel package such as linux-image-cloud-amd64 in the recipe")


def download(packages: Iterable[DebPackage], cache: Path) -> list[Path]:
    """The .deb file of each package, downloaded once into `cache` and verified against apt's SHA256."""
    cache.mkdir(parents=True, exist_ok=True)
    needed = [p for p in packages if not _verified(cache / p.deb_name, p.sha256)]
    if needed:
        _run(["apt-get", "download", "-q", *[f"{p.name}={p.version}" for p in needed]], cwd=cache)
    paths = []
    for package in packages:
        path = cache / package.deb_name
        if not _verified(path, package.sha256):
            raise EnvironmentUnfit(f"downloaded {path.name} does not match the SHA256 in apt's index",
                                   fix=f"delete {path} and build again")
        paths.append(path)
    return paths


def _verified(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    if not sha256:  # a local repository without hashes: trust the file name (which holds the version)
        return True
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == sha256


def unpack(deb: Path, root: Path) -> None:
    """Extract a package's files (no maintainer scripts run: nothing here needs them to boot)."""
    _run(["dpkg-deb", "-x", str(deb), str(root)])
