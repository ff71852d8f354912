"""Measures the CLI as a client of `lg serve` against the same commands on the local store, and prints JSON.

A state store holds GATES runs, each paused at an open gate; `lg serve` serves it on 127.0.0.1. Each command is
run as a real process (`python -m lg ...`, what a user or CI job pays, interpreter start included), SAMPLES times;
the medians and maxima of wall time, locally (LG_STATE_DIR) and with --server. The approvals decide a different
gate each time, so every sample records one decision.

Usage: python benchmarks/client_bench.py  (from the repository root)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.server_bench import DIFF, _new_run, start_server  # noqa: E402
from lg.runs.gates import GateRules, GateStore  # noqa: E402
from lg.runs.store import RunStore  # noqa: E402
from lg.runs.tokens import Role, TokenStore  # noqa: E402

SAMPLES = 7
GATES = 2 * SAMPLES  # one per approval, local and through the server


def fill(state: Path) -> tuple[list[str], str]:
    store = RunStore(state)
    gates = GateStore(store)
    run_ids = []
    for index in range(GATES):
        run = _new_run(store, state.parent)
        card = {"run": run.id, "gate": "deploy.effects", "step": "deploy", "kind": "effects", "level": "orange",
                "command": "npm install left-pad@1.3.0 && ./deploy.sh --env production", "rules": [],
                "changes": [{"path": "package.json", "change": "modify", "diff": DIFF}]}
        gates.open(run.id, "deploy", "effects", {"run": run.id, "n": index}, card,
                   GateRules(allow_self_approval=True))
        run_ids.append(run.id)
    token = TokenStore(store).create("approver@example.com", Role.APPROVER, "bench")[1]
    store.close()
    return run_ids, token


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "lg", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                            check=False, timeout=120)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"lg {' '.join(argv)}: exit {result.returncode}: {result.stderr}")
    return took


def summary(values: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lg-client-bench-") as temp:
        state, cwd = Path(temp) / "state", Path(temp) / "cwd"
        cwd.mkdir()
        run_ids, token = fill(state)
        server, url = start_server(state)
        base = {**os.environ, "PYTHONPATH": str(REPO)}
        base.pop("LG_SERVER", None)
        local = {**base, "LG_STATE_DIR": str(state), "LG_USER": "local@example.com"}
        remote = {**base, "LG_TOKEN": token, "LG_STATE_DIR": str(Path(temp) / "empty")}
        try:
            reads = {
                "pending --json": ["pending", "--json"],
                "show RUN": ["show", run_ids[0]],
                "status RUN --json": ["status", run_ids[0], "--json"],
            }
            result: dict[str, object] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
                                         "samples": SAMPLES}
            for name, argv in reads.items():
                result[name] = {
                    "local": summary([timed(argv, cwd, local) for _ in range(SAMPLES)]),
                    "server": summary([timed([*argv, "--server", url], cwd, remote) for _ in range(SAMPLES)])}
            result["approve RUN"] = {
                "local": summary([timed(["approve", run_id], cwd, local) for run_id in run_ids[:SAMPLES]]),
                "server": summary([timed(["approve", run_id, "--server", url], cwd, remote)
                                   for run_id in run_ids[SAMPLES:]])}
        finally:
            server.terminate()
            server.wait()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
