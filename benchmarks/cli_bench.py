"""Times `lg --help` and `lg validate` on a generated 500-step pipeline, as real subprocesses.

Prints JSON. Targets (issue 3): validate of 500 steps well under a second; --help fast (no heavy imports).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNS = 5


def pipeline_text(steps: int) -> str:
    lines = ["name: bench", "vars: {app: web}", "steps:"]
    for index in range(steps):
        lines += [f"  - id: s{index}", f"    run: echo {{{{ vars.app }}}} {index} && make -j2 target{index}"]
        if index:
            lines.append(f"    needs: [s{index - 1}]")
    return "\n".join(lines) + "\n"


def median_seconds(argv: list[str], cwd: Path) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{argv} failed ({result.returncode}): {result.stderr}")
    return statistics.median(times)


def in_process_validate_seconds(path: Path) -> float:
    from lg.config.pipeline import load_pipeline

    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        load_pipeline(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    lg = str(Path(sys.executable).with_name("lg"))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        path = root / "big.yaml"
        path.write_text(pipeline_text(500))
        report = {
            "lg_help_seconds": round(median_seconds([lg, "--help"], root), 4),
            "python_startup_seconds": round(median_seconds([sys.executable, "-c", "pass"], root), 4),
            "validate_500_steps_seconds": round(median_seconds([lg, "validate", str(path)], root), 4),
            "load_500_steps_in_process_seconds": round(in_process_validate_seconds(path), 4),
            "runs": RUNS,
            "statistic": "median",
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
