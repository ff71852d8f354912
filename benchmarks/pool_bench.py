"""Warm pool numbers on this host, measured in one run and printed as JSON, with the ratios the pool is judged by.

    .venv/bin/python benchmarks/pool_bench.py [--image tiny] [--boots 3] [--restores 5] [--leases 10] [--steps 20]

What it measures (every number labelled with the accelerator that produced it):
- cold boot to agent-ready, and snapshot restore to agent-ready (the same image and shape);
- a lease from a warm pool (an idle VM ready), in-process and through `lg pool serve`;
- exec round trips on a restored VM;
- the per-step cost of a pipeline of N trivial steps run by `lg run` (wall time / N, lg's start included):
  with a warm `lg pool serve` daemon holding N ready VMs, with the run's own in-process pool (started with
  the run: it makes VMs as fast as two cores allow), and with `pool.snapshots: false` (every step cold-boots);
- host RSS of an idle pooled VM against the guest memory it touched.
Targets (issue "Warm VM pool"): lease <= 1/200 of a cold boot; restore <= 1/10 of a cold boot; per-step overhead
with the pool < 0.3 s (judged for both pool placements); idle RSS <= touched guest memory + 30 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vm_bench import cold_boots  # noqa: E402 - the same measurement as benchmarks/vm_bench.py

from lg.config.project import load_project_config  # noqa: E402
from lg.images.store import require_image  # noqa: E402
from lg.model import PoolSettings  # noqa: E402
from lg.pool import client  # noqa: E402
from lg.pool.key import key_for, profile_digest  # noqa: E402
from lg.pool.pool import WarmPool  # noqa: E402
from lg.pool.templates import TemplateStore  # noqa: E402
from lg.runs.store import RunStore  # noqa: E402
from lg.vm.api import ExecRequest, VmSpec  # noqa: E402
from lg.vm.qemu import QemuHypervisor  # noqa: E402


def median(samples: list[float], digits: int = 4) -> float:
    return round(statistics.median(samples), digits)


def restores(hypervisor: QemuHypervisor, store: TemplateStore, spec: VmSpec, count: int) -> dict[str, Any]:
    started = time.monotonic()
    template, _ = store.ensure(spec)
    built = time.monotonic() - started
    samples, execs, hellos = [], [], []
    for index in range(count):
        started = time.monotonic()
        with hypervisor.restore(template.path / "state", spec) as vm:
            samples.append(time.monotonic() - started)
            if index == 0:
                for _ in range(50):
                    began = time.perf_counter()
                    vm.exec(ExecRequest(argv=("/bin/true",)))
                    execs.append(time.perf_counter() - began)
                    began = time.perf_counter()
                    vm.agent.call("hello")
                    hellos.append(time.perf_counter() - began)
    return {"template_build_s": round(built, 2), "template_mb": round(template.size_bytes / 1e6, 1),
            "restore_to_ready_s": median(samples, 3), "restore_samples_s": [round(s, 3) for s in samples],
            "exec_true_after_restore_ms": round(median(execs) * 1000, 2),
            "agent_hello_after_restore_ms": round(median(hellos) * 1000, 2)}


def wait_idle(pool: WarmPool, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while pool.status()["idle"] < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not fill to {count} idle VMs within {timeout:.0f}s: {pool.status()}")
        time.sleep(0.05)


def pooled_leases(template_root: Path, spec: VmSpec, count: int) -> dict[str, Any]:
    """Leases from an in-process pool whose idle VMs are ready; then the RSS of idle pooled VMs."""
    key = key_for("qemu", spec, profile_digest({}))
    settings = PoolSettings(min_idle=0, max_idle=2, max_active=4)
    hypervisor = QemuHypervisor(state_dir=REPO / ".lg" / "test-state")
    with WarmPool(lambda name: hypervisor, settings, template_root) as pool:
        samples = []
        for _ in range(count):
            pool.expect(key, spec, 2)
            wait_idle(pool, 2)
            time.sleep(0.3)  # let the refill's last restore settle: measure the lease, not CPU contention
            started = time.perf_counter()
            lease = pool.lease(key, spec)
            samples.append(time.perf_counter() - started)
            assert lease.source == "warm", lease.source
            lease.release()
        pool.expect(key, spec, 2)
        wait_idle(pool, 2)
        time.sleep(2.0)
        rss = idle_rss(pool)
    return {"lease_warm_in_process_ms": round(median(samples) * 1000, 2),
            "lease_warm_samples_ms": [round(s * 1000, 2) for s in samples], **rss}


def idle_rss(pool: WarmPool) -> dict[str, Any]:
    """Host memory of each idle pooled VM's QEMU (RSS, PSS, USS), the part of it that is guest RAM, and the
    guest memory the guest itself has in use (MemTotal - MemFree inside)."""
    with pool._cond:
        idle = [ready.vm for queue in pool._idle.values() for ready in queue]
    rss, pss, uss, guest_resident, in_use = [], [], [], [], []
    for vm in idle:
        pid = vm.pid  # type: ignore[attr-defined]
        memory = psutil.Process(pid).memory_full_info()
        rss.append(memory.rss / (1 << 20))
        pss.append(memory.pss / (1 << 20))
        uss.append(memory.uss / (1 << 20))
        guest_resident.append(_guest_ram_resident_mib(pid))
        output: list[bytes] = []
        vm.exec(ExecRequest(argv=("/bin/cat", "/proc/meminfo")), on_output=lambda s, c, out=output: out.append(c))
        info = {line.split(":")[0]: int(line.split()[1]) for line in b"".join(output).decode().splitlines()}
        in_use.append((info["MemTotal"] - info["MemFree"]) / 1024)
    return {"idle_pooled_vm_rss_mib": round(statistics.mean(rss), 1),
            "idle_pooled_vm_pss_mib": round(statistics.mean(pss), 1),
            "idle_pooled_vm_uss_mib": round(statistics.mean(uss), 1),
            "idle_pooled_guest_ram_resident_mib": round(statistics.mean(guest_resident), 1),
            "idle_pooled_guest_in_use_mib": round(statistics.mean(in_use), 1),
            "idle_rss_minus_guest_in_use_mib": round(statistics.mean(rss) - statistics.mean(in_use), 1)}


def _guest_ram_resident_mib(pid: int) -> float:
    """RSS of the guest RAM mapping: the template's RAM file (mapped privately) or, for a VM that was not
    restored from a template, the largest anonymous mapping."""
    best, current, is_ram = 0, 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            is_ram = line.rstrip().endswith("/ram") or len(fields) == 5
            current = 0
        elif fields and fields[0] == "Rss:" and is_ram:
            current = int(fields[1])
            best = max(best, current)
    return best / 1024


def daemon_leases(image: str, count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lg-bench-daemon-") as scratch:
        project = Path(scratch)
        (project / "lg.yaml").write_text(f"image: {image}\nstate_dir: .lg\npool: {{max_idle: 2, max_active: 4}}\n")
        socket_path = project / "sock" / "pool.sock"
        env = {**os.environ, "LG_POOL_SOCKET": str(socket_path)}
        daemon = subprocess.Popen([sys.executable, "-m", "lg", "pool", "serve"], cwd=project, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert daemon.stdout is not None
            daemon.stdout.readline()
            config = load_project_config(project)
            remote = client.connect(config, socket_path)
            assert remote is not None
            spec = VmSpec(image=require_image(config, image), accelerator=config.accelerator, hostname="bench")
            key = key_for("qemu", spec, profile_digest({}))
            samples = []
            for _ in range(count):
                remote.expect(key, spec, 1)
                deadline = time.monotonic() + 120
                while not any(k["idle"] for k in remote.status()["keys"]) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.3)
                started = time.perf_counter()
                lease = remote.lease(key, spec)
                samples.append(time.perf_counter() - started)
                lease.release()
            remote.close()
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    return {"lease_warm_via_daemon_ms": round(median(samples) * 1000, 2),
            "lease_via_daemon_samples_ms": [round(s * 1000, 2) for s in samples]}


def pipeline_cost(image: str, steps: int, mode: str) -> dict[str, Any]:
    """`lg run` of `steps` trivial steps (each writes a file: a change the diff card shows and lg applies).
    `mode` is where VMs come from: "in_process" (the run's own pool, started with the run), "warm_daemon"
    (`lg pool serve`, holding `steps` ready VMs before the run starts, as a CI host keeps it) or "no_pool"
    (`pool.snapshots: false`: every step cold-boots). Templates are built beforehand by a warm-up run."""
    with tempfile.TemporaryDirectory(prefix="lg-bench-pipeline-") as scratch:
        project = Path(scratch)
        pool = {"in_process": "{snapshots: true}", "no_pool": "{snapshots: false}",
                "warm_daemon": f"{{min_idle: {steps}, max_idle: {steps}, max_active: {steps + 4}}}"}[mode]
        (project / "lg.yaml").write_text(f"image: {image}\nstate_dir: .lg\npool: {pool}\n")
        body = "".join(f"  - id: s{index}\n    run: echo {index} > out{index}.txt\n" for index in range(steps))
        (project / "pipeline.yaml").write_text(textwrap.dedent("name: bench\nsteps:\n") + body)
        (project / "warm.yaml").write_text("name: warm\nsteps:\n  - id: w\n    run: 'true'\n")
        socket_path = project / "sock" / "pool.sock"  # a daemon only in warm_daemon mode: never another one
        env = {**os.environ, "LG_POOL_SOCKET": str(socket_path)}
        with contextlib.ExitStack() as stack:
            if mode == "warm_daemon":
                stack.enter_context(_serving(project, env, socket_path))
            if mode != "no_pool":
                subprocess.run([sys.executable, "-m", "lg", "run", "warm.yaml"], cwd=project, env=env, check=True,
                               capture_output=True)
            if mode == "warm_daemon":
                _wait_daemon_idle(load_project_config(project), socket_path, steps)
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "lg", "run", "pipeline.yaml"], cwd=project, env=env,
                                  capture_output=True, text=True, check=False)
            wall = time.monotonic() - started
        if done.returncode != 0:
            raise SystemExit(f"the benchmark pipeline failed:\n{done.stdout}\n{done.stderr}")
        store = RunStore(project / ".lg")
        run = store.runs(1)[0]
        records = store.steps(run.id)
        durations = [r.finished - r.started for r in records if r.finished and r.started]
        span = max(r.finished or 0.0 for r in records) - min(r.started or float("inf") for r in records)
        sources = [str((r.vm or {}).get("source")) for r in records]
    # per_step_s: the whole `lg run` over N, its one-time start (imports, config, policy, state) included;
    # per_step_after_start_s: from the first step's start to the last one's end, over N.
    return {f"{mode}_wall_s": round(wall, 2), f"{mode}_per_step_s": round(wall / steps, 3),
            f"{mode}_per_step_after_start_s": round(span / steps, 3),
            f"{mode}_step_record_median_s": median(durations, 3),
            f"{mode}_vm_sources": {source: sources.count(source) for source in sorted(set(sources))}}


@contextlib.contextmanager
def _serving(project: Path, env: dict[str, str], socket_path: Path) -> Iterator[None]:
    daemon = subprocess.Popen([sys.executable, "-m", "lg", "pool", "serve"], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert daemon.stdout is not None
        daemon.stdout.readline()  # its "serving" line: the socket is up
        yield
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)


def _wait_daemon_idle(config: Any, socket_path: Path, count: int, timeout: float = 600.0) -> None:
    remote = client.connect(config, socket_path)
    assert remote is not None
    try:
        deadline = time.monotonic() + timeout
        while sum(key["idle"] for key in remote.status()["keys"]) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not fill to {count} idle VMs within {timeout:.0f}s")
            time.sleep(0.5)
        time.sleep(2.0)  # the last refill's warm-up settles: measure the run, not the fill
    finally:
        remote.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="tiny")
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--restores", type=int, default=5)
    parser.add_argument("--leases", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    options = parser.parse_args()

    config = load_project_config(REPO)
    image = require_image(config, options.image)
    hypervisor = QemuHypervisor(state_dir=REPO / ".lg" / "test-state")
    with tempfile.TemporaryDirectory(prefix="lg-bench-pool-") as scratch:
        spec = VmSpec(image=image, accelerator=config.accelerator, run_dir=Path(scratch, "vms"), hostname="bench")
        template_root = Path(scratch, "templates")
        boots, accelerator = cold_boots(hypervisor, spec, options.boots)
        restored = restores(hypervisor, TemplateStore(template_root, hypervisor), spec, options.restores)
        leases = pooled_leases(template_root, spec, options.leases)
    daemon = daemon_leases(options.image, max(3, options.leases // 2))
    pipelines = {mode: pipeline_cost(options.image, options.steps, mode)
                 for mode in ("warm_daemon", "in_process", "no_pool")}
    cold = statistics.median(boots)
    results: dict[str, Any] = {
        "accelerator": accelerator, "image": image.name, "memory_mib": spec.memory_mib, "vcpus": spec.vcpus,
        "host_cpus": os.cpu_count(),
        "cold_boot_to_ready_s": round(cold, 3), "cold_boot_samples_s": [round(s, 3) for s in boots],
        **restored, **leases, **daemon, **{k: v for result in pipelines.values() for k, v in result.items()},
    }
    without = pipelines["no_pool"]["no_pool_per_step_s"]
    results["ratios"] = {
        "lease_in_process_over_cold_boot": round(leases["lease_warm_in_process_ms"] / 1000 / cold, 5),
        "lease_via_daemon_over_cold_boot": round(daemon["lease_warm_via_daemon_ms"] / 1000 / cold, 5),
        "restore_over_cold_boot": round(restored["restore_to_ready_s"] / cold, 3),
        "per_step_warm_daemon_over_no_pool": round(pipelines["warm_daemon"]["warm_daemon_per_step_s"] / without, 3),
        "per_step_in_process_over_no_pool": round(pipelines["in_process"]["in_process_per_step_s"] / without, 3),
    }
    results["targets"] = {
        "lease_at_most_1_200_of_cold_boot": results["ratios"]["lease_in_process_over_cold_boot"] <= 1 / 200,
        "restore_at_most_1_10_of_cold_boot": results["ratios"]["restore_over_cold_boot"] <= 1 / 10,
        "per_step_overhead_under_0_3_s_warm_daemon_pool": pipelines["warm_daemon"]["warm_daemon_per_step_s"] < 0.3,
        "per_step_overhead_under_0_3_s_in_process_pool": pipelines["in_process"]["in_process_per_step_s"] < 0.3,
        "idle_rss_at_most_touched_plus_30_mib": leases["idle_rss_minus_guest_in_use_mib"] <= 30,
    }
    results["notes"] = [
        "per-step targets: the warm pool (a daemon holding ready VMs) is the pool the target is judged on; the "
        "run's own pool starts empty, and under TCG each VM costs about one CPU-second to make (restore, then the "
        "warm-up that fills QEMU's translation cache, or the same translation during the step), so on "
        f"{os.cpu_count()} cores it cannot make 20 VMs much faster than 20 / cores seconds",
        "pipeline numbers vary run to run on a shared host by 10-15%: compare ratios taken in one run",
    ]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
