"""Parallel steps in real microVMs (tiny image, TCG here): overlap shown by the store's timestamps, and a
fail_fast cancellation that stops a running sibling's VM. The logic is tested on the fake backend
(tests/runner/test_parallel_fake.py); these show it holds with QEMU."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.runner.test_run_vm import pipeline, records

pytestmark = pytest.mark.vm


def qemus_in(project: Path) -> list[str]:
    """Running QEMU processes whose command line names a path of the project (its VMs' run directories)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        info = process.info
        if "qemu" in (info["name"] or "") and info["status"] != psutil.STATUS_ZOMBIE \
                and str(project) in " ".join(info["cmdline"] or ()):
            found.append(" ".join(info["cmdline"]))
    return found


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_image_ready: None) -> Path:
    (tmp_path / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\npool: {max_idle: 2, max_active: 4}\n")
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_two_independent_steps_really_overlap_in_their_vms(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: overlap
        steps:
          - {id: left, run: "sleep 4; echo left > left.txt"}
          - {id: right, run: "sleep 4; echo right > right.txt"}
          - {id: join, needs: [left, right], run: "cat left.txt right.txt > both.txt"}
        """)
    result = lg("run", path)
    assert result.code == 0, result.out + result.err
    _, steps = records(project)
    left, right, join = steps
    assert left.vm is not None and right.vm is not None and left.vm["vm"] != right.vm["vm"]  # a VM each
    # Each step ran for 4 s or more inside its VM; they overlapped for most of it
    overlap = min(left.finished, right.finished) - max(left.started, right.started)
    assert overlap > 3.0, (left.started, left.finished, right.started, right.finished)
    assert join.started >= max(left.finished, right.finished)
    assert (project / "both.txt").read_text() == "left\nright\n"


def test_fail_fast_stops_the_running_sibling_s_vm(project: Path) -> None:
    path = pipeline(project, """\
        name: fail-fast
        steps:
          - {id: broken, run: "sleep 2; exit 3"}
          - {id: slow, run: "sleep 120; echo late > late.txt"}
          - {id: cleanup, needs: [broken, slow], if: always(), run: echo cleaned > cleaned.txt}
        """)
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "lg.cli.main", "run", str(path)], cwd=project,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=110)  # far less than the slow step's 120 s
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, output
    assert time.monotonic() - started < 100
    assert qemus_in(project) == []  # the cancelled step's VM, and every other, is gone
    run, steps = records(project)
    assert run.status == "failed" and run.error == "step(s) failed: broken; cancelled: slow"
    assert {s.step_id: s.status for s in steps} == {"broken": "failed", "slow": "cancelled", "cleanup": "succeeded"}
    assert "[slow] cancelled: step 'broken' failed (fail_fast); VM stopped, nothing applied" in output
    assert not (project / "late.txt").exists() and (project / "cleaned.txt").read_text() == "cleaned\n"


def test_a_gate_pauses_its_branch_while_the_other_runs_in_its_vm(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: branch-gate
        steps:
          - {id: ship, approve: true, run: echo shipped > shipped.txt}
          - {id: build, run: "sleep 2; echo built > built.txt"}
        """)
    paused = lg("run", path)
    assert paused.code == 3, paused.out + paused.err
    run, steps = records(project)
    assert run.status == "awaiting_approval"
    assert {s.step_id: s.status for s in steps} == {"ship": "awaiting_approval", "build": "succeeded"}
    assert (project / "built.txt").read_text() == "built\n" and not (project / "shipped.txt").exists()
    assert lg("approve", run.id, "ship.before").code == 0
    resumed = lg("resume", run.id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert (project / "shipped.txt").read_text() == "shipped\n"
    _, steps = records(project)
    assert [s.attempts for s in steps] == [1, 1]  # build did not run again
