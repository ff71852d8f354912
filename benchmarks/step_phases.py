"""Where one step's VM time goes, phase by phase, on warm pooled VMs (no contention), printed as JSON.

    .venv/bin/python benchmarks/step_phases.py [--image tiny] [--vms 6] [--files 20 60]

For each workspace size: VMs are made ready in an in-process pool first (restored and warmed up, as a daemon
holds them), then each is leased and does what a step does (lg.runner.step_vm): put a workspace of N small
files owned by the step user, run a confined `sh -e -c 'echo 1 > out.txt'` under the default VM profile, list
the changes, fetch them. Medians per phase, in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lg.config.project import load_project_config  # noqa: E402
from lg.images.store import require_image  # noqa: E402
from lg.model import PoolSettings  # noqa: E402
from lg.pool.key import key_for, profile_digest  # noqa: E402
from lg.pool.pool import WarmPool  # noqa: E402
from lg.runner.step_vm import GUEST_OUTPUT_DIR, GUEST_WORKSPACE, warmup_for  # noqa: E402
from lg.security.profile import load_vm_profile  # noqa: E402
from lg.vm.api import ExecRequest, VmSpec  # noqa: E402
from lg.vm.qemu import QemuHypervisor  # noqa: E402


def phases(image_name: str, vms: int, files: int) -> dict[str, Any]:
    config = load_project_config(REPO)
    profile = load_vm_profile("default", config, REPO)
    spec = VmSpec(image=require_image(config, image_name), accelerator=config.accelerator, hostname="bench",
                  vcpus=profile.machine.vcpus, memory_mib=profile.machine.memory_mib)
    key = key_for("qemu", spec, profile_digest(profile.confinement()))
    hypervisor = QemuHypervisor(state_dir=REPO / ".lg" / "test-state")
    uid, gid = profile.uid_gid
    warmup = warmup_for(profile)
    samples: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        samples.setdefault(name, []).append(time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="lg-bench-phases-") as scratch:
        workspace = Path(scratch, "workspace")
        workspace.mkdir()
        for index in range(files):
            (workspace / f"f{index}.txt").write_text(f"{index}\n" * 10)
        settings = PoolSettings(min_idle=0, max_idle=vms, max_active=vms + 2)
        with WarmPool(lambda name: hypervisor, settings, config.cache_dir / "snapshots") as pool:
            pool.expect(key, spec, vms, warmup)
            while pool.status()["idle"] < vms:
                time.sleep(0.2)
            time.sleep(3.0)  # the last refill's warm-up settles: measure the step, not the fill
            command = ExecRequest(argv=("/bin/sh", "-e", "-c", "echo 1 > out.txt"), cwd=GUEST_WORKSPACE,
                                  env={"HOME": GUEST_WORKSPACE}, uid=uid, gid=gid, timeout=60,
                                  confine=profile.confinement(), mkdirs=(GUEST_WORKSPACE, GUEST_OUTPUT_DIR))
            for index in range(vms):
                with timed("lease"):
                    lease = pool.lease(key, spec, warmup=warmup)
                with timed("put"):
                    lease.vm.put_tree(workspace, GUEST_WORKSPACE, None, owner=(uid, gid))
                with timed("exec"):
                    lease.vm.exec(command)
                with timed("changes"):
                    changes = list(lease.vm.changes(GUEST_WORKSPACE))
                with timed("fetch"):
                    lease.vm.get_paths(GUEST_WORKSPACE, [c.path for c in changes], Path(scratch, f"back{index}"))
                lease.release()
    return {name: round(statistics.median(values) * 1000, 1) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="tiny")
    parser.add_argument("--vms", type=int, default=6)
    parser.add_argument("--files", type=int, nargs="+", default=[20, 60])
    options = parser.parse_args()
    results = {f"{count}_files_ms": phases(options.image, options.vms, count) for count in options.files}
    print(json.dumps({"image": options.image, "vms_per_size": options.vms, **results}, indent=2))


if __name__ == "__main__":
    main()
