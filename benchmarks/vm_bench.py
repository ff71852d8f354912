"""VM numbers on this host, as JSON: cold boot, exec round trip, copy throughput, idle RSS.

    .venv/bin/python benchmarks/vm_bench.py [--image tiny] [--accelerator auto|kvm|tcg] [--boots 5]

Uses the built image (`lg image build tiny`), or the files named by LG_TEST_KERNEL / LG_TEST_INITRD.
Every number is labelled with the accelerator that produced it: TCG and KVM differ by an order of magnitude.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lg.vm.api import ExecRequest, GuestImage, VmSpec  # noqa: E402
from lg.vm.qemu import QemuHypervisor  # noqa: E402
from lg.vm.qemu_vm import QemuVm  # noqa: E402

GUEST_DIR = "/tmp/lg-bench"  # noqa: S108 - a path inside the throwaway guest


def find_image(name: str) -> GuestImage:
    from tests.vm.conftest import ImageFiles, find_test_image

    if os.environ.get("LG_TEST_KERNEL") or name == "tiny":
        found = find_test_image()
        if found is not None:
            return found
    from lg.config.project import load_project_config
    from lg.images.store import require_image

    return ImageFiles.of(require_image(load_project_config(REPO), name))


def snapshot_numbers(hypervisor: QemuHypervisor, vm: QemuVm, spec: VmSpec, count: int) -> dict[str, object]:
    """Save the booted VM, then restore clones from it (what a warm pool would do)."""
    with tempfile.TemporaryDirectory(prefix="lg-bench-snap-") as scratch:
        snapshot = Path(scratch, "snapshot")
        started = time.monotonic()
        hypervisor.save_snapshot(vm, snapshot)
        saved = time.monotonic() - started
        size = sum(path.stat().st_size for path in snapshot.iterdir())
        restores, rss = [], 0.0
        for _ in range(count):
            started = time.monotonic()
            with hypervisor.restore(snapshot, spec) as clone:
                restores.append(time.monotonic() - started)
                rss = idle_rss_mb(clone, settle=0.5)
    return {
        "snapshot_save_s": round(saved, 2),
        "snapshot_size_mb": round(size / (1 << 20), 1),
        "restore_to_agent_ready_median_s": round(statistics.median(restores), 2),
        "restore_samples_s": [round(sample, 2) for sample in restores],
        "restored_vm_rss_mb": rss,
    }


def median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def cold_boots(hypervisor: QemuHypervisor, spec: VmSpec, count: int) -> tuple[list[float], str]:
    seconds, accelerator = [], ""
    for _ in range(count):
        started = time.monotonic()
        with hypervisor.boot(spec) as vm:
            seconds.append(time.monotonic() - started)
            accelerator = vm.accelerator
    return seconds, accelerator


def exec_round_trips(vm: QemuVm, count: int) -> dict[str, float]:
    true_runs, hello_runs = [], []
    for _ in range(count):
        started = time.perf_counter()
        vm.exec(ExecRequest(script="true"))  # sh -c true: images may lack a `true` binary
        true_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        vm.agent.call("hello")
        hello_runs.append(time.perf_counter() - started)
    return {"exec_sh_c_true_median_ms": median_ms(true_runs), "agent_hello_median_ms": median_ms(hello_runs)}


def copy_throughput(vm: QemuVm, megabytes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        source, back = Path(scratch, "in"), Path(scratch, "out")
        source.mkdir()
        for index in range(4):
            Path(source, f"part{index}.bin").write_bytes(os.urandom(megabytes * (1 << 20) // 4))
        put = vm.put_tree(source, GUEST_DIR, None)
        got = vm.get_paths(GUEST_DIR, [f"part{index}.bin" for index in range(4)], back)
    return {
        "copy_in_mb_per_s": round(put.bytes / (1 << 20) / put.seconds, 1),
        "copy_out_mb_per_s": round(got.bytes / (1 << 20) / got.seconds, 1),
        "copy_mb": megabytes,
    }


def idle_rss_mb(vm: QemuVm, settle: float) -> float:
    time.sleep(settle)
    return round(psutil.Process(vm.pid).memory_info().rss / (1 << 20), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="tiny")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--copy-mb", type=int, default=20)
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lg-bench-") as run_dir:
        hypervisor = QemuHypervisor(state_dir=REPO / ".lg" / "test-state")
        spec = VmSpec(image=find_image(options.image), accelerator=options.accelerator, run_dir=Path(run_dir))
        boots, accelerator = cold_boots(hypervisor, spec, options.boots)
        with hypervisor.boot(spec) as vm:
            results: dict[str, object] = {
                "accelerator": accelerator,
                "image": spec.image.name,
                "cold_boot_to_agent_ready_median_s": round(statistics.median(boots), 2),
                "cold_boot_samples_s": [round(sample, 2) for sample in boots],
                "guest_uptime_at_ready_s": vm.agent_info.uptime,
                "idle_vm_rss_mb": idle_rss_mb(vm, settle=2.0),
                **exec_round_trips(vm, options.execs),
                **copy_throughput(vm, options.copy_mb),
                **snapshot_numbers(hypervisor, vm, spec, options.boots),
                "vcpus": spec.vcpus,
                "memory_mib": spec.memory_mib,
                "host_cpus": os.cpu_count(),
            }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
