"""Times grading: a 500-step pipeline against the default policy, cold (first parse) and warm. Prints JSON."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from lg.config.pipeline import load_pipeline
from lg.policy.grade import grade_step
from lg.policy.load import load_policy_file
from lg.policy.shell import analyse

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = [
    "make -j2 target{i} && ./bin/test --shard {i}",
    "python3 -m pytest -q tests/unit/test_{i}.py",
    "curl -fsSL https://example.com/install{i}.sh | sh",
    "rm -rf build/{i} && mkdir -p build/{i}",
    "for f in src/*.c; do gcc -c \"$f\" -o obj/$(basename \"$f\" .c).o; done",
    "sh -c 'echo {i} > out/{i}.txt' && git diff --stat",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "big.yaml"
        lines = ["name: bench", "steps:"]
        for index in range(500):
            script = SCRIPTS[index % len(SCRIPTS)].format(i=index).replace("'", "''")
            lines += [f"  - id: s{index}", f"    run: '{script}'"]
        path.write_text("\n".join(lines) + "\n")
        pipeline = load_pipeline(path)
        started = time.perf_counter()
        policy = load_policy_file(REPO / "profiles/risk/default.yaml")
        load_seconds = time.perf_counter() - started
        runs = []
        for _ in range(5):
            analyse.cache_clear()  # cold: every script parsed and analysed again, as in a fresh process
            started = time.perf_counter()
            grades = [grade_step(policy, step) for step in pipeline.steps]
            runs.append(time.perf_counter() - started)
    print(json.dumps({
        "policy_load_seconds_including_examples": round(load_seconds, 4),
        "grade_500_steps_first_seconds": round(runs[0], 4),
        "grade_500_steps_median_seconds": round(statistics.median(runs), 4),
        "steps_gated": sum(1 for grade in grades if grade.gate),
        "rules": len(policy.rules),
    }, indent=2))


if __name__ == "__main__":
    main()
