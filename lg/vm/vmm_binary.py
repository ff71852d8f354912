"""A virtual machine monitor's binary on this host: found on PATH (or not) and asked for its version.

Every backend that runs a VMM process (QEMU, Firecracker, Cloud Hypervisor) probes and fingerprints it the same way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VmmBinary:
    """A VMM found (or not) on this host."""

    backend: str
    name: str  # a name looked up on PATH, or a path
    install_fix: str
    # Where the version is in `NAME --version`: "v1.7.0", "cloud-hypervisor v41.0", "QEMU emulator version 7.2.x".
    version_pattern: str = r"v?(\d+\.\d+(?:\.\d+)?\S*)"

    def path(self) -> Path | None:
        found = shutil.which(self.name)
        return Path(found) if found else None

    def version(self) -> str | None:
        path = self.path()
        if path is None:
            return None
        try:
            done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(self.version_pattern, done.stdout + done.stderr)
        return match.group(1) if match else None
