"""The live progress view of a run on a terminal: each step, its state and its time, redrawn as the run goes.

It reads the run's records from the state store (a thread of its own polls them), so it shows exactly what
`lg status` would, however the engine schedules steps, and needs nothing from the engine. Step output still
scrolls above it. Only on a terminal and without NO_COLOR (lg.cli.output.color_enabled); elsewhere the plain
`[step] ...` lines are all there is. rich (https://github.com/Textualize/rich) draws it, imported on use.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lg.runs.states import EXECUTING_RUNS, StepStatus
from lg.runs.store import RunRecord, RunStore, StepRecord

if TYPE_CHECKING:
    from rich.live import Live

POLL_SECONDS = 0.25
STYLES = {
    StepStatus.PENDING: "dim", StepStatus.RUNNING: "bold cyan", StepStatus.SUCCEEDED: "green",
    StepStatus.FAILED: "bold red", StepStatus.TIMED_OUT: "bold red", StepStatus.SKIPPED: "dim",
    StepStatus.AWAITING_APPROVAL: "yellow", StepStatus.HELD: "yellow", StepStatus.REJECTED: "red",
    StepStatus.EXPIRED: "red", StepStatus.INTERRUPTED: "red", StepStatus.CANCELLED: "red",
}


class Snapshot:
    """The run and its steps as last read."""

    def __init__(self) -> None:
        self.run: RunRecord | None = None
        self.steps: Sequence[StepRecord] = ()


def find_run(store: RunStore, run_id: str | None) -> RunRecord | None:
    """The run to show: the one named, else the newest that this process is running (`lg run` learns the id
    only once the engine has recorded the run)."""
    if run_id is not None:
        return store.run(run_id)
    for record in store.runs(5):
        if record.pid == os.getpid() and record.status in EXECUTING_RUNS:
            return record
    return None


def step_table(snapshot: Snapshot, now: float | None = None) -> Any:
    from rich.table import Table  # noqa: PLC0415

    now = time.time() if now is None else now
    run = snapshot.run
    title = f"run {run.id}: {run.pipeline}" if run else "starting the run"
    table = Table(title=title, title_justify="left", expand=False, box=None, pad_edge=False)
    for column, justify in (("step", "left"), ("state", "left"), ("time", "right"), ("", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for step in snapshot.steps:
        table.add_row(step.step_id, f"[{STYLES.get(step.status, '')}]{step.status.value}[/]",
                      _elapsed(step, now), _note(step))
    return table


class LiveProgress:
    """`with LiveProgress(state_dir, run_id):` draws the progress of the run while the block runs."""

    def __init__(self, state_dir: Path, run_id: str | None = None, state_url: str | None = None) -> None:
        self.state_dir, self.state_url = state_dir, state_url
        self.run_id = run_id
        self.snapshot = Snapshot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="lg-progress", daemon=True)
        self._live: Live | None = None

    def __enter__(self) -> LiveProgress:
        from rich.live import Live  # noqa: PLC0415

        self._live = Live(get_renderable=lambda: step_table(self.snapshot), refresh_per_second=4,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self._live is not None:
            self._live.stop()  # draws the last state once more, and leaves it on the screen

    def _poll_loop(self) -> None:
        # a connection of this thread's own (sqlite connections stay in theirs)
        store = RunStore(self.state_dir, self.state_url)
        while True:
            self._poll(store)
            if self._stop.wait(POLL_SECONDS):
                self._poll(store)
                return

    def _poll(self, store: RunStore) -> None:
        try:
            run = find_run(store, self.run_id) if self.run_id or self.snapshot.run is None \
                else store.run(self.snapshot.run.id)
            if run is not None:
                self.snapshot.steps = store.steps(run.id)
                self.snapshot.run = run
        except Exception:  # noqa: S110 - a view must never break the run it shows; the next poll tries again
            pass


def _elapsed(step: StepRecord, now: float) -> str:
    if step.started is None:
        return ""
    end = step.finished if step.finished is not None else now
    return f"{end - step.started:.1f}s"


def _note(step: StepRecord) -> str:
    if step.status is StepStatus.RUNNING and step.attempts > 1:
        return f"attempt {step.attempts}"
    detail = (step.detail or "").splitlines()[0] if step.detail else ""
    return detail if len(detail) <= 60 else detail[:57] + "..."
