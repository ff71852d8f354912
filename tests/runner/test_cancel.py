"""`lg cancel` stops a live run whatever signal dispositions its `lg run` inherited, and `lg run` started in the
background of a script can be interrupted (issue #20 items 1 and 9).

A background job of a non-interactive shell (`lg run p.yaml &` in a script) starts with SIGINT ignored; these
tests start the real `lg` command line that way (tests/runner/lg_on_fake.py: lg's CLI on the fake backend, so
no QEMU) and stop it as a user would. tests/runner/test_run_vm.py does it once with real VMs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lg.config.project import load_project_config
from lg.errors import ExitCode, InvalidInput, RunCancelled
from lg.runs.states import RunStatus
from lg.runs.store import CancelRequested, RunStore
from lg.testing.fake import FakeVm
from lg.testing.images import stand_in_image
from lg.vm.api import ExecRequest, ExecResult
from tests.runner.test_engine_fake import (
    TWO_STEPS,
    Project,
    project,  # noqa: F401 - the engine tests' fixture, used below
)

REPO = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("lg_on_fake.py")

SLOW_THEN_MORE = """\
    name: slow
    steps:
      - {id: first, run: echo one > one.txt}
      - {id: slow, needs: first, run: "touch started; sleep 120; echo late > late.txt"}
      - {id: after, needs: slow, run: echo never > after.txt}
"""


@dataclass
class Live:
    """An `lg` process started as a background job of a script would be."""

    root: Path
    process: subprocess.Popen[str]
    vms: Path

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err

    @property
    def store(self) -> RunStore:
        return RunStore(self.root / ".lg")


@pytest.fixture
def cli_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\npool: {snapshots: false}\n")
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(root)  # for the in-process `lg cancel` / `lg approve`
    stand_in_image(load_project_config(root), "tiny")
    return root


@pytest.fixture
def start(cli_project: Path, tmp_path: Path) -> Iterator[Callable[..., Live]]:
    started: list[Live] = []

    def launch(pipeline: str, *args: str, ignored: tuple[signal.Signals, ...] = (signal.SIGINT,)) -> Live:
        (cli_project / "pipeline.yaml").write_text(textwrap.dedent(pipeline))
        vms = tmp_path / f"vms{len(started)}"

        def as_a_background_job() -> None:  # what `cmd &` in a non-interactive sh does (and nohup, for SIGHUP)
            for signum in ignored:
                signal.signal(signum, signal.SIG_IGN)

        process = subprocess.Popen(
            [sys.executable, str(HELPER), str(vms), "run", "pipeline.yaml", *args], cwd=cli_project, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=as_a_background_job)  # noqa: PLW1509 - the point of the test: inherited dispositions
        started.append(Live(cli_project, process, vms))
        return started[-1]

    yield launch
    for live in started:
        if live.process.poll() is None:
            live.process.kill()
            live.process.wait()


def lg_command(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Another `lg` process, as a user in another terminal (not this one: waiting for the run's process here
    would reap the test's own child, whose exit code the test reads)."""
    return subprocess.run([sys.executable, "-m", "lg", *args], cwd=root, text=True, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False)


def wait_for(what: Callable[[], bool], live: Live, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert live.process.poll() is None, live.process.stderr.read() if live.process.stderr else ""
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def slow_step_started(live: Live) -> bool:
    try:
        return any(live.vms.rglob("workspace/started"))
    except FileNotFoundError:
        return False  # a VM directory removed while the walk was in it


def run_id_of(live: Live) -> str:
    return live.store.runs(1)[0].id


def sleepers(marker: Path) -> list[int]:
    """Host processes of the fake VMs' step commands (the fake runs them on the host)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(marker) in (proc / "cwd").resolve().as_posix():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("ignored", [(signal.SIGINT,), (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)],
                         ids=["sigint-ignored", "sigint-sigterm-sighup-ignored"])
def test_lg_cancel_stops_a_live_background_run_mid_step_and_nothing_after_runs(
        start: Callable[..., Live], lg: Callable[..., Any], ignored: tuple[signal.Signals, ...]) -> None:
    live = start(SLOW_THEN_MORE, ignored=ignored)
    wait_for(lambda: slow_step_started(live), live)
    run_id = run_id_of(live)
    asked = time.monotonic()
    result = lg_command(live.root, "cancel", run_id)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - asked < 15  # not "when the step ends" (120 s)
    assert "cancelled" in result.stdout
    code, err = live.finish()
    assert code == ExitCode.REJECTED and f"run {run_id} cancelled" in err, err
    store = live.store
    assert store.run(run_id).status is RunStatus.CANCELLED
    assert {s.step_id: str(s.status) for s in store.steps(run_id)} == {
        "first": "succeeded", "slow": "cancelled", "after": "cancelled"}
    assert (live.root / "one.txt").exists()
    assert not (live.root / "late.txt").exists() and not (live.root / "after.txt").exists()
    kinds = [(r.kind, r.data.get("status")) for r in store.audit_log.records() if r.run_id == run_id]
    assert ("run.cancel_requested", None) in kinds and kinds[-1][0] in ("run.cancelled", "gate.cancelled")
    assert not any(kind == "run.finished" for kind, _ in kinds)  # never "succeeded", then relabelled
    assert store.verify_audit() == []
    assert sleepers(live.vms) == [] and not [p for p in live.vms.glob("*") if p.is_dir() and any(p.iterdir())]
    again = lg("cancel", run_id)  # a finished run is never relabelled
    assert again.code == 2 and "already finished (cancelled)" in again.err


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_cancellation_recorded_from_elsewhere_stops_the_running_step(
        start: Callable[..., Live], backend: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`lg cancel` on another machine can only record the request in the shared store (no signal reaches this
    one): the run's cancel watch reads it, from SQLite's file or through the PostgreSQL store, and stops the
    running step at once rather than when it ends (120 s)."""
    if backend == "postgresql":
        monkeypatch.setenv("LG_STATE_URL", request.getfixturevalue("pg_cluster").database())
    live = start(SLOW_THEN_MORE)
    store = RunStore(live.root / ".lg", os.environ.get("LG_STATE_URL"))
    deadline = time.monotonic() + 60
    while not store.runs(1) or not slow_step_started(live):
        assert live.process.poll() is None and time.monotonic() < deadline, "the slow step never started"
        time.sleep(0.05)
    run_id = store.runs(1)[0].id
    asked = time.monotonic()
    store.request_cancel(run_id, "cancelled from another machine", "ops@example.com")
    code, err = live.finish(timeout=60)
    assert code == ExitCode.REJECTED and f"run {run_id} cancelled" in err, err
    assert time.monotonic() - asked < 30
    assert store.run(run_id).status is RunStatus.CANCELLED
    assert not (live.root / "late.txt").exists() and not (live.root / "after.txt").exists()


def test_lg_cancel_stops_a_run_waiting_at_a_gate_with_wait(start: Callable[..., Live], lg: Callable[..., Any]) -> None:
    live = start("""\
        name: gated
        steps:
          - {id: ship, approve: true, run: echo shipped > shipped.txt}
        """, "--wait")
    wait_for(lambda: bool(live.store.runs(1)) and live.store.runs(1)[0].status is RunStatus.AWAITING_APPROVAL, live)
    run_id = run_id_of(live)
    assert lg_command(live.root, "cancel", run_id).returncode == 0
    code, err = live.finish()
    assert code == ExitCode.REJECTED and "cancelled" in err
    assert live.store.run(run_id).status is RunStatus.CANCELLED and not (live.root / "shipped.txt").exists()
    assert lg("approve", run_id).code == 2  # nothing left to decide


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_background_lg_run_is_interrupted_by_sigint_and_sigterm(start: Callable[..., Live],
                                                                  signum: signal.Signals) -> None:
    """Item 9: SIGINT, inherited as ignored, interrupts lg anyway, as SIGTERM does: exit 130, resumable."""
    live = start(SLOW_THEN_MORE)
    wait_for(lambda: slow_step_started(live), live)
    run_id = run_id_of(live)
    live.process.send_signal(signum)
    code, err = live.finish(timeout=30)
    assert code == ExitCode.INTERRUPTED and f"run {run_id} interrupted" in err, err
    record = live.store.run(run_id)
    assert record.status is RunStatus.INTERRUPTED and record.cancel_requested is None
    assert str(live.store.step(run_id, "slow").status) == "interrupted"
    assert not (live.root / "late.txt").exists() and sleepers(live.vms) == []


# --- the store's half: no progress once cancelling, whatever became of the signal ---------------------------


def test_once_cancel_is_requested_the_store_refuses_every_step_forward(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "state")
    run = store.create_run("p", tmp_path / "p.yaml", tmp_path, "alice", [("a", "A"), ("b", "B"), ("c", "C")])
    store.start_run(run.id)
    store.start_step(run.id, "a", tmp_path / "a.log", "0" * 64)
    store.applying(run.id, "a")
    store.start_step(run.id, "b", tmp_path / "b.log", "0" * 64)
    store.request_cancel(run.id, "stop", "carol")
    store.applied(run.id, "a", ())  # effects already landing finish landing
    for forward in (lambda: store.applying(run.id, "b"), lambda: store.start_step(run.id, "c", tmp_path, "0"),
                    lambda: store.skip_step(run.id, "c", "x"),
                    lambda: store.finish_run(run.id, RunStatus.SUCCEEDED, 0, None),
                    lambda: store.finish_run(run.id, RunStatus.FAILED, 1, "x")):
        with pytest.raises(CancelRequested):
            forward()
    with pytest.raises(InvalidInput, match="is being cancelled"):
        store.claim(run.id, "dave")
    store.cancel(run.id, "stop")
    assert {s.step_id: str(s.status) for s in store.steps(run.id)} == {
        "a": "succeeded", "b": "cancelled", "c": "cancelled"}
    with pytest.raises(InvalidInput, match="already finished"):
        store.request_cancel(run.id, "again", "carol")
    assert store.verify_audit() == []


def test_a_request_without_any_signal_stops_the_engine_before_anything_lands(project: Project) -> None:  # noqa: F811
    """The engine on the fake in this process, where lg's handlers are not installed: no signal, no watcher.
    The request alone (recorded while the step runs) keeps the step's effects out and the next step from
    running, and the run ends cancelled, not succeeded."""
    fake = project

    def cancel_meanwhile(vm: FakeVm, request: ExecRequest, attempt: int) -> ExecResult | None:
        fake.store.request_cancel(fake.store.runs(1)[0].id, "stop now", "carol")
        return None  # the step itself runs to its end

    fake.steps.script = cancel_meanwhile
    with pytest.raises(RunCancelled) as stopped:
        fake.run(TWO_STEPS)
    assert stopped.value.exit_code == ExitCode.REJECTED and "stop now" in str(stopped.value)
    run_id = fake.store.runs(1)[0].id
    assert fake.store.run(run_id).status is RunStatus.CANCELLED
    assert fake.statuses(run_id) == {"first": "cancelled", "second": "cancelled"}
    assert not (fake.root / "one.txt").exists() and fake.steps.of("second") == []
    assert not (fake.store.run_dir(run_id) / "effects" / "first").exists()
    assert fake.store.verify_audit() == []
