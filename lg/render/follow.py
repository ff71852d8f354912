"""`lg logs -f`: a run's step logs as they grow, until the step (or the run) stops.

The engine appends each line to the step's log file and flushes it (lg.runner.console), and records the step's
status in the store; following is reading both: new lines from the files, and the records to know when to
stop. A step that ended (or waits at a gate) has nothing more to say; a run whose lg process is gone neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lg.errors import InvalidInput
from lg.runs.states import EXECUTING_RUNS, StepStatus
from lg.runs.store import RunRecord, RunStore, StepRecord

POLL_SECONDS = 0.2
_STILL_GOING = frozenset({StepStatus.PENDING, StepStatus.RUNNING})


def follow(store: RunStore, run_id: str, step_id: str | None = None, *,
           sleep: Callable[[float], None] = time.sleep) -> Iterator[tuple[str, str]]:
    """(step id, text) pieces of the logs, whole lines each, as they are written; returns when the step
    (or, without `step_id`, the run) stops."""
    offsets: dict[str, int] = {}
    while True:
        run = store.run(run_id)
        steps = _chosen(store, run, step_id)
        done = _stopped(run, steps, step_id)  # read before the files: lines written before the end are all in
        for step in steps:
            yield from _new_lines(step, offsets, final=done)
        if done:
            return
        sleep(POLL_SECONDS)


def _chosen(store: RunStore, run: RunRecord, step_id: str | None) -> list[StepRecord]:
    steps = store.steps(run.id)
    if step_id is None:
        return steps
    chosen = [step for step in steps if step.step_id == step_id]
    if not chosen:
        raise InvalidInput(f"run {run.id} has no step {step_id!r}")
    return chosen


def _stopped(run: RunRecord, steps: list[StepRecord], step_id: str | None) -> bool:
    alive = run.status in EXECUTING_RUNS and run.process_alive
    if step_id is None or not alive:
        return not alive
    return steps[0].status not in _STILL_GOING


def _new_lines(step: StepRecord, offsets: dict[str, int], final: bool) -> Iterator[tuple[str, str]]:
    if not step.log_path:
        return
    path = Path(step.log_path)
    start = offsets.get(step.step_id, 0)
    try:
        with path.open("rb") as log:
            log.seek(start)
            data = log.read()
    except OSError:
        return
    end = len(data) if final else data.rfind(b"\n") + 1  # a line being written waits for its newline
    if end > 0:
        offsets[step.step_id] = start + end
        yield step.step_id, data[:end].decode("utf-8", "replace")
