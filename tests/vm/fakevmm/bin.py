"""Executables named as the real VMMs (`firecracker`, `jailer`, `cloud-hypervisor`) that run the fakes of this
package, in a directory a test puts first on PATH or hands to a backend: lg then starts them as it would start
the real binaries, as processes of their own."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MODULES = {"firecracker": "tests.vm.fakevmm.firecracker", "jailer": "tests.vm.fakevmm.jailer",
           "cloud-hypervisor": "tests.vm.fakevmm.cloud_hypervisor"}


def install_fakes(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, module in MODULES.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m {module} \"$@\"\n")
        path.chmod(0o755)
        made[name] = path
    return made
