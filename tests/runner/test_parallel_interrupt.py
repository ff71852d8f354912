"""A live `lg run` with steps running at once, stopped by a signal and by `lg cancel`: every running step is
stopped (its command gone with its VM, nothing applied), and `lg resume` finishes the partly run DAG. The real
`lg` command line on the fake backend (tests/runner/lg_on_fake.py), as tests/runner/test_cancel.py does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

from lg.errors import ExitCode
from lg.runs.states import RunStatus
from tests.runner import test_cancel
from tests.runner.test_cancel import HELPER, REPO, Live, lg_command, run_id_of, sleepers, wait_for

cli_project, start = test_cancel.cli_project, test_cancel.start  # the fixtures

BOTH_SLOW = """\
    name: both-slow
    steps:
      - {id: a, run: "touch started; [ -e fast ] || sleep 120; echo a > a.txt"}
      - {id: b, run: "touch started; [ -e fast ] || sleep 120; echo b > b.txt"}
      - {id: c, needs: [a, b], run: "cat a.txt b.txt > c.txt"}
"""


def both_started(live: Live) -> bool:
    try:
        return len(list(live.vms.rglob("workspace/started"))) >= 2
    except FileNotFoundError:
        return False


def test_a_signal_stops_every_running_step_and_resume_finishes_the_dag(start: Callable[..., Live]) -> None:
    live = start(BOTH_SLOW)
    wait_for(lambda: both_started(live), live)
    run_id = run_id_of(live)
    live.process.send_signal(signal.SIGTERM)
    code, err = live.finish(timeout=30)
    assert code == ExitCode.INTERRUPTED and f"run {run_id} interrupted" in err, err
    store = live.store
    assert store.run(run_id).status is RunStatus.INTERRUPTED
    assert {s.step_id: str(s.status) for s in store.steps(run_id)} == {
        "a": "interrupted", "b": "interrupted", "c": "pending"}
    assert sleepers(live.vms) == [] and not (live.root / "a.txt").exists()
    (live.root / "fast").write_text("")  # the steps run again from scratch, quickly this time
    resumed = subprocess.run([sys.executable, str(HELPER), str(live.vms), "resume", run_id], cwd=live.root,
                             text=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                             timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr
    assert (live.root / "c.txt").read_text() == "a\nb\n"
    assert store.verify_audit() == []


def test_lg_cancel_stops_every_running_step(start: Callable[..., Live]) -> None:
    live = start(BOTH_SLOW)
    wait_for(lambda: both_started(live), live)
    run_id = run_id_of(live)
    assert lg_command(live.root, "cancel", run_id).returncode == 0
    code, err = live.finish(timeout=60)
    assert code == ExitCode.REJECTED and f"run {run_id} cancelled" in err, err
    store = live.store
    assert {s.step_id: str(s.status) for s in store.steps(run_id)} == {
        "a": "cancelled", "b": "cancelled", "c": "cancelled"}
    assert sleepers(live.vms) == [] and not (live.root / "a.txt").exists() and not (live.root / "b.txt").exists()
    assert store.verify_audit() == []

