"""The state store's own speed, on SQLite and on PostgreSQL: how many runs it records a second, and how long a
gate decision takes.

For each store (SQLite: lg.db on disk in a temporary directory, WAL; PostgreSQL: a throwaway PostgreSQL 15
cluster from tests/pgcluster.py, on a unix socket, with fsync on, as a real server would run):
- runs_per_s, transitions_per_s: create_run with STEPS steps, start_run, then each step graded, started,
  applying and applied, and finish_run: every one a committed transaction with its audit records;
- decision_ms p50/p99: GateStore.record of one approval that settles a 1-of-1 gate (re-read the gate under the
  write lock, insert the decision, close the gate, two audit records, commit), over DECISIONS gates;
- open_gates_ms p50/p99: GateStore.open_gates() with those gates decided and OPEN more still open.
Prints JSON. Needs Debian's postgresql-15 for the PostgreSQL half (skipped, and said, without it).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lg.model import FileChange  # noqa: E402
from lg.runs.gates import Decision, GateRules, GateStore  # noqa: E402
from lg.runs.states import RunStatus  # noqa: E402
from lg.runs.store import RunStore  # noqa: E402
from tests import pgcluster  # noqa: E402

RUNS = 40
STEPS = 5
DECISIONS = 200
OPEN = 100


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def record_runs(store: RunStore, workspace: Path) -> dict[str, float]:
    steps = [(f"s{index}", f"step {index}") for index in range(STEPS)]
    transactions = 0
    started = time.perf_counter()
    for _ in range(RUNS):
        run = store.create_run("bench", workspace / "p.yaml", workspace, "bench", steps)
        store.start_run(run.id)
        for step_id, _ in steps:
            store.grade_step(run.id, step_id, {"level": "green"})
            store.start_step(run.id, step_id, workspace / f"{step_id}.log", "ab" * 32)
            store.applying(run.id, step_id)
            store.applied(run.id, step_id, (FileChange(f"{step_id}.txt", "created"),))
        store.finish_run(run.id, RunStatus.SUCCEEDED, 0, None)
        transactions += 3 + 4 * STEPS
    elapsed = time.perf_counter() - started
    return {"runs_per_s": round(RUNS / elapsed, 1), "transitions_per_s": round(transactions / elapsed, 1)}


def decide_gates(store: RunStore, workspace: Path) -> dict[str, float]:
    gates = GateStore(store)
    run = store.create_run("gates", workspace / "p.yaml", workspace, "bench",
                           [(f"g{index}", "gated") for index in range(DECISIONS + OPEN)])
    opened = [gates.open(run.id, f"g{index}", "explicit", {"n": index}, {"level": "orange"}, GateRules())
              for index in range(DECISIONS + OPEN)]
    samples = []
    for gate in opened[:DECISIONS]:
        decision = Decision(run.id, gate.gate_id, gate.digest, "approver", "approve", "ok", "{}", None, None,
                            time.time())
        started = time.perf_counter()
        settled = gates.record(gate, decision)
        samples.append((time.perf_counter() - started) * 1000)
        assert settled.status == "approved"  # a benchmark that measured a refusal is wrong
    reads = []
    for _ in range(50):
        started = time.perf_counter()
        assert len(gates.open_gates()) == OPEN
        reads.append((time.perf_counter() - started) * 1000)
    return {"decision_ms_p50": round(statistics.median(samples), 2),
            "decision_ms_p99": round(percentile(samples, 0.99), 2),
            "open_gates_ms_p50": round(statistics.median(reads), 2),
            "open_gates_ms_p99": round(percentile(reads, 0.99), 2)}


def measure(state_dir: Path, url: str | None) -> dict[str, float]:
    store = RunStore(state_dir, url)
    try:
        result = record_runs(store, state_dir) | decide_gates(store, state_dir)
        assert store.verify_audit() == []
        return result
    finally:
        store.close()


def main() -> None:
    report: dict[str, object] = {"runs": RUNS, "steps_per_run": STEPS, "decisions": DECISIONS}
    with tempfile.TemporaryDirectory(prefix="lg-store-bench-") as directory:
        report["sqlite"] = measure(Path(directory) / "sqlite", None)
        missing = pgcluster.available()
        if missing:
            report["postgresql"] = {"skipped": missing}
        else:
            cluster = pgcluster.Cluster(fsync=True).start()
            try:
                report["postgresql"] = measure(Path(directory) / "postgresql", cluster.database())
            finally:
                cluster.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
