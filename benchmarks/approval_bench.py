"""Times how long a waiting run takes to go on after `lg approve`, as real processes against a real state store.

A `lg run --wait` process waits at an explicit gate; the benchmark starts `lg approve` and measures:
- approve_cli_s: the `lg approve` process, start to exit (Python start-up, signature-free decision, commit);
- approve_to_continue_s: from starting `lg approve` to the runner recording `run.continued` (what the user
  feels: the issue promises the runner picks a decision up within half a second);
- decision_to_notice_s: from the decision's commit to the runner noticing it (the polling delay alone).
The runner then boots the step's VM (tiny image), which is not part of these numbers.

Prints JSON. Needs the tiny image (lg image build tiny) and a host that can run VMs.
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

SAMPLES = 5
PIPELINE = """\
name: approval-bench
steps:
  - id: gated
    approve: {reason: benchmark}
    run: echo approved
"""


def lg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lg", *args], cwd=cwd, capture_output=True, text=True, check=False)


def wait_for_gate(cwd: Path, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        pending = json.loads(lg("pending", "--json", cwd=cwd).stdout or "[]")
        if pending:
            return dict(pending[0])
        time.sleep(0.05)
    raise SystemExit("the run never reached its gate")


def audit_time(cwd: Path, kind: str, run_id: str) -> float:
    records = json.loads(lg("audit", "export", "--json", cwd=cwd).stdout)
    return max(float(r["ts"]) for r in records if r["kind"] == kind and r["run_id"] == run_id)


def sample(cwd: Path) -> dict[str, float]:
    runner = subprocess.Popen([sys.executable, "-m", "lg", "run", "--wait", "pipeline.yaml"], cwd=cwd,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gate = wait_for_gate(cwd, time.monotonic() + 60)
        started_wall, started = time.time(), time.perf_counter()
        approved = lg("approve", str(gate["run"]), str(gate["gate"]), cwd=cwd)
        approve_cli = time.perf_counter() - started
        if approved.returncode != 0:
            raise SystemExit(f"lg approve failed: {approved.stderr}")
        if runner.wait(timeout=300) != 0:
            raise SystemExit("the run did not succeed after approval")
    finally:
        if runner.poll() is None:
            runner.kill()
    run_id = str(gate["run"])
    continued = audit_time(cwd, "run.continued", run_id)
    decided = audit_time(cwd, "gate.approved", run_id)
    return {"approve_cli_s": approve_cli, "approve_to_continue_s": continued - started_wall,
            "decision_to_notice_s": continued - decided}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lg-approval-bench-") as scratch:
        cwd = Path(scratch)
        (cwd / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\n")
        (cwd / "pipeline.yaml").write_text(PIPELINE)
        os.environ.pop("LG_STATE_DIR", None)
        samples = [sample(cwd) for _ in range(SAMPLES)]
    report: dict[str, object] = {"samples": SAMPLES}
    for key in samples[0]:
        values = [s[key] for s in samples]
        report[key] = {"median": round(statistics.median(values), 4), "max": round(max(values), 4)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
