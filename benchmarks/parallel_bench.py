"""Parallel steps against one at a time, in real VMs, through the real `lg run`, printed as JSON.

    .venv/bin/python benchmarks/parallel_bench.py [--image tiny] [--shards 8] [--parallel 8] [--repeats 1]

Two 8-shard matrices, each run with `max_parallel: 1` and then with `max_parallel: N` (same pipeline otherwise),
in a scratch project whose pool may hold every shard's VM (pool.max_active and max_idle = shards):
- sleep: each shard runs `sleep 2` (a step that waits: a test against a service, a download);
- cpu: each shard runs a busy shell loop (a step that computes), whose speed-up is bounded by the host's cores.
Per run: the `lg run` process's wall time (`wall_s`, start-up and pool included) and the steps' span from the
store (`steps_s`: first step started to last step finished); `ratio` is parallel over sequential wall time.
The target for the sleep matrix (issue #19) is a ratio of 0.4 or less. Needs the image built (lg image build
tiny) and a host that runs VMs; say how loaded the host was (load_before), since other work skews both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lg.runs.store import RunStore  # noqa: E402

SLEEP = "sleep 2"
# About 2-3 s per shard under TCG: busybox sh counting, no I/O (calibrated on the development machines)
CPU = 'i=0; while [ "$i" -lt 120000 ]; do i=$((i + 1)); done'


def pipeline(name: str, script: str, shards: int, limit: int) -> str:
    values = ", ".join(str(n) for n in range(1, shards + 1))
    return (f"name: {name}\nmax_parallel: {limit}\nsteps:\n  - id: shard\n    matrix: {{n: [{values}]}}\n"
            f"    run: '{script}'\n")


def run_once(project: Path, name: str, script: str, shards: int, limit: int) -> dict[str, Any]:
    path = project / f"{name}-{limit}.yaml"
    path.write_text(pipeline(name, script, shards, limit))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lg", "run", str(path)], cwd=project, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"lg run {path.name} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    store = RunStore(project / ".lg")
    try:
        steps = store.steps(store.runs(1)[0].id)
    finally:
        store.close()
    starts = [s.started for s in steps if s.started]
    ends = [s.finished for s in steps if s.finished]
    durations = [s.duration for s in steps if s.duration]
    return {"wall_s": round(wall, 2), "steps_s": round(max(ends) - min(starts), 2),
            "step_median_s": round(statistics.median(durations), 2),
            "accelerator": next((s.accelerator for s in steps if s.accelerator), None)}


def compare(project: Path, name: str, script: str, shards: int, parallel: int, repeats: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"sequential": [], "parallel": []}
    for _ in range(repeats):  # alternated, so that a change of the host's load hits both alike
        runs["sequential"].append(run_once(project, name, script, shards, 1))
        runs["parallel"].append(run_once(project, name, script, shards, parallel))
    best = {mode: min(samples, key=lambda s: s["wall_s"]) for mode, samples in runs.items()}
    return {
        "script": script, "shards": shards, "max_parallel": parallel,
        "sequential": best["sequential"], "parallel": best["parallel"],
        "ratio": round(best["parallel"]["wall_s"] / best["sequential"]["wall_s"], 3),
        "steps_ratio": round(best["parallel"]["steps_s"] / best["sequential"]["steps_s"], 3),
        "samples": runs if repeats > 1 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="tiny")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="lg-bench-parallel-") as scratch:
        project = Path(scratch)
        (project / "lg.yaml").write_text(
            f"image: {args.image}\nstate_dir: .lg\npaths: {{vm_profiles: {REPO}/profiles/vm, risk_policies: "
            f"{REPO}/profiles/risk, seccomp: {REPO}/profiles/seccomp, apparmor: {REPO}/profiles/apparmor, "
            f"images: {REPO}/images}}\npool: {{max_idle: {args.shards}, max_active: {args.shards}}}\n")
        run_once(project, "warm-up", "true", 1, 1)  # the pool's template exists before anything is timed
        results = {
            "sleep": compare(project, "sleep", SLEEP, args.shards, args.parallel, args.repeats),
            "cpu": compare(project, "cpu", CPU, args.shards, args.parallel, args.repeats),
        }
    results["sleep"]["target_ratio"] = 0.4
    results["sleep"]["target_met"] = results["sleep"]["ratio"] <= 0.4
    print(json.dumps({"host_cores": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
                      "load_after": [round(x, 2) for x in os.getloadavg()], **results}, indent=2))


if __name__ == "__main__":
    main()
