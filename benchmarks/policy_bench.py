"""Grading speed and the default policy's gate rate, as JSON.

- 500 steps graded against the default policy, cold (every script parsed again) and the median of five cold runs;
- the benign CI corpus (tests/policy/benign/ci_steps.yaml): the share of ordinary CI steps the default policy
  stops before they run, under the `build` VM profile plus the corpus's declared registries (issue 18: <= 10%);
- the red-team corpus (tests/policy/corpus/redteam.yaml): the share of its commands at or over the gate (100%).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from lg.config.pipeline import load_pipeline
from lg.config.project import load_project_config
from lg.policy.grade import grade_command, grade_script, grade_step
from lg.policy.load import load_policy_file
from lg.policy.model import Relaxation, RiskPolicy
from lg.policy.shell import analyse
from lg.security.profile import load_vm_profile

REPO = Path(__file__).resolve().parent.parent
BENIGN = REPO / "tests/policy/benign/ci_steps.yaml"
REDTEAM = REPO / "tests/policy/corpus/redteam.yaml"
SCRIPTS = [
    "make -j2 target{i} && ./bin/test --shard {i}",
    "python3 -m pytest -q tests/unit/test_{i}.py",
    "curl -fsSL https://example.com/install{i}.sh | sh",
    "rm -rf build/{i} && mkdir -p build/{i}",
    "for f in src/*.c; do gcc -c \"$f\" -o obj/$(basename \"$f\" .c).o; done",
    "sh -c 'echo {i} > out/{i}.txt' && git diff --stat",
]


def speed(policy: RiskPolicy) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "big.yaml"
        lines = ["name: bench", "steps:"]
        for index in range(500):
            script = SCRIPTS[index % len(SCRIPTS)].format(i=index).replace("'", "''")
            lines += [f"  - id: s{index}", f"    run: '{script}'"]
        path.write_text("\n".join(lines) + "\n")
        pipeline = load_pipeline(path)
        runs = []
        for _ in range(5):
            analyse.cache_clear()  # cold: every script parsed and analysed again, as in a fresh process
            started = time.perf_counter()
            grades = [grade_step(policy, step) for step in pipeline.steps]
            runs.append(time.perf_counter() - started)
    return {"grade_500_steps_first_seconds": round(runs[0], 4),
            "grade_500_steps_median_seconds": round(statistics.median(runs), 4),
            "bench_steps_gated": sum(1 for grade in grades if grade.gate)}


def benign(policy: RiskPolicy) -> dict[str, Any]:
    corpus = yaml.safe_load(BENIGN.read_text())
    profile = load_vm_profile("build", load_project_config(REPO), REPO)
    relaxations = profile.relaxations() + [Relaxation("network", entry) for entry in corpus["network"]]
    gated = []
    for step in corpus["steps"]:
        assessment = grade_script(policy, step["run"], relaxations)
        if assessment.gate:
            top = assessment.matches[0]
            gated.append({"project": step["project"], "run": step["run"], "level": assessment.level.label,
                          "rule": top.rule_id, "program": top.program})
    total = len(corpus["steps"])
    return {"benign_steps": total, "benign_gated": len(gated), "benign_gated_share": round(len(gated) / total, 4),
            "benign_gated_steps": gated}


def redteam(policy: RiskPolicy) -> dict[str, Any]:
    commands = yaml.safe_load(REDTEAM.read_text())["commands"]
    missed = [case["command"] for case in commands
              if grade_command(policy, case["command"]).level < policy.thresholds.before]
    return {"redteam_commands": len(commands), "redteam_gated_share": round(1 - len(missed) / len(commands), 4),
            "redteam_missed": missed}


def main() -> None:
    started = time.perf_counter()
    policy = load_policy_file(REPO / "profiles/risk/default.yaml")
    report = {"policy_load_seconds_including_examples": round(time.perf_counter() - started, 4),
              "rules": len(policy.rules), **speed(policy), **benign(policy), **redteam(policy)}
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
