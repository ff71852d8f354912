"""Run a pipeline's steps as a DAG: every step whose needs have ended starts, up to `max_parallel` at once.

The loop lives in the run's main thread; each step runs in a worker thread (the work is waiting on VMs). The
main thread alone decides: which step starts next (the file's order among the ready ones, so that the record
is the same from one run to the next), whether it runs or is skipped (lg.runner.conditions, evaluated before
it starts), what a failure stops (`fail_fast`: running steps are stopped through their VM,
lg.runner.stopping, and recorded cancelled), and when the run pauses. A step that meets an open gate pauses
its own branch (lg.runner.gating.BranchPaused) while the others go on; its gate is looked at while they run,
and its step starts again once the gate is decided. Only when nothing else can run does the run itself pause
(exit 3, or wait with --wait).

Ctrl-C, `lg cancel` and any error stop every running step (their VMs stopped, nothing of them applied; effects
already landing finish) before the exception goes on to the engine, which records the run's end.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Generic, Protocol, TypeVar

from lg.config.pipeline import topological_order
from lg.errors import InternalError
from lg.model import Pipeline, ProjectConfig, Step
from lg.runner.conditions import Ended, failed, runs_after_failure, stops
from lg.runner.gating import BranchPaused
from lg.runner.interrupts import deferred
from lg.runner.stopping import StopSwitch
from lg.runs.gates import Gate

POLL_SECONDS = 0.1
"""How often the loop looks at the gates its paused branches wait at (and at nothing else: step ends wake it)."""

S = TypeVar("S", bound=Ended)


class Hooks(Protocol[S]):
    """What the engine does for the scheduler (lg.runner.engine._Hooks)."""

    def decide(self, step: Step, states: Mapping[str, S]) -> S | None:
        """Whether the step runs (None), or how it ended without running (recorded): in the main thread."""
        ...

    def execute(self, step: Step, states: Mapping[str, S], switch: StopSwitch) -> S:
        """Run the step (in a worker thread); may raise BranchPaused."""
        ...

    def cancel_waiting(self, step: Step, reason: str) -> S:
        """Cancel a step waiting at its gate (recorded)."""
        ...

    def decided(self, gates: list[Gate]) -> list[Gate]:
        """Those of `gates` that are decided (or expired) now."""
        ...

    def stall(self, gates: list[Gate]) -> None:
        """Nothing can run but past `gates`: pause the run (raises), or wait until one is decided."""
        ...


def max_parallel(pipeline: Pipeline, config: ProjectConfig) -> int:
    """The pipeline's `max_parallel`, else lg.yaml's, else two steps per core (a step mostly waits on its VM):
    never more than the pool's `max_active`, past which leases would only queue."""
    wanted = pipeline.max_parallel or config.max_parallel or 2 * (os.cpu_count() or 1)
    return max(1, min(wanted, config.pool.max_active))


def limit_note(pipeline: Pipeline, config: ProjectConfig) -> str | None:
    """What to tell the user when the max_parallel they asked for is more than the pool allows."""
    asked = pipeline.max_parallel or config.max_parallel
    if asked is None or asked <= config.pool.max_active:
        return None
    return (f"max_parallel {asked} is more than the pool's max_active ({config.pool.max_active}): "
            f"{config.pool.max_active} steps at most run at once (raise pool.max_active in lg.yaml)")


class Scheduler(Generic[S]):
    """One run's loop (see the module). `states` holds how each ended step ended, and gets the others' as they
    end: a resumed run passes those its earlier processes ended, which never run again."""

    def __init__(self, pipeline: Pipeline, states: dict[str, S], hooks: Hooks[S], limit: int) -> None:
        self.pipeline, self.states, self.hooks, self.limit = pipeline, states, hooks, limit
        order = topological_order(pipeline)
        self._position = {step.id: index for index, step in enumerate(order)}
        self.pending = [step for step in order if step.id not in states]
        self.running: dict[Future[S], tuple[Step, StopSwitch]] = {}
        self.waiting: dict[str, tuple[Step, Gate]] = {}  # branches paused at a gate

    def run(self) -> None:
        """Until every step has ended (`states` then has them all), or the run pauses or stops (an exception)."""
        executor = ThreadPoolExecutor(max_workers=self.limit, thread_name_prefix="lg-step")
        try:
            self._loop(executor)
        except BaseException as error:
            with deferred():  # a second Ctrl-C does not cut the stopping of the first short
                self._stop_all(f"the run stopped: {error or type(error).__name__}")
            raise
        finally:
            executor.shutdown(wait=True)

    def _loop(self, executor: ThreadPoolExecutor) -> None:
        while True:
            self._dispatch(executor)
            if not self.running:
                if self.waiting:
                    self.hooks.stall([gate for _, gate in self.waiting.values()])
                    self._resume_decided()
                    continue
                if self.pending:  # cannot happen: a pending step's needs are all pending, running or ended
                    raise InternalError(f"steps left that cannot start: {', '.join(s.id for s in self.pending)}")
                return
            done, _ = wait(self.running, timeout=POLL_SECONDS if self.waiting else 1.0, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=lambda f: self._position[self.running[f][0].id]):
                step, _ = self.running.pop(future)
                self._collect(step, future)
            self._resume_decided()

    def _dispatch(self, executor: ThreadPoolExecutor) -> None:
        """Start ready steps in the file's order while there is room; skipped ones may make others ready."""
        progress = True
        while progress:
            progress = False
            for step in list(self.pending):
                if len(self.running) >= self.limit:
                    return
                if any(need not in self.states for need in step.needs) or self._group_full(step):
                    continue
                self.pending.remove(step)
                progress = True
                ended = self.hooks.decide(step, dict(self.states))
                if ended is not None:
                    self._ended(step, ended)
                    continue
                switch = StopSwitch()
                future = executor.submit(self.hooks.execute, step, dict(self.states), switch)
                self.running[future] = (step, switch)

    def _group_full(self, step: Step) -> bool:
        group = step.matrix_group
        if group is None or group.max_parallel is None:
            return False
        siblings = sum(1 for other, _ in self.running.values()
                       if other.matrix_group is not None and other.matrix_group.id == group.id)
        return siblings >= group.max_parallel

    def _collect(self, step: Step, future: Future[S]) -> None:
        try:
            state = future.result()
        except BranchPaused as paused:
            self.waiting[step.id] = (step, paused.gate)
            cause = next((sid for sid, s in self.states.items() if failed(s)
                          and stops(self.pipeline, self.pipeline.step(sid), step)), None)
            if cause is not None and not runs_after_failure(step):  # a failure stopped it on its way to the gate
                self._cancel_waiting(step.id, cause)
            return
        self._ended(step, state)

    def _ended(self, step: Step, state: S) -> None:
        self.states[step.id] = state
        if not failed(state):
            return
        reason = f"cancelled: step {step.id!r} failed (fail_fast)"
        for other, switch in self.running.values():
            if stops(self.pipeline, step, other) and not runs_after_failure(other):
                switch.stop(reason, cancelled=True)
        for step_id, (other, _) in list(self.waiting.items()):
            if stops(self.pipeline, step, other) and not runs_after_failure(other):
                self._cancel_waiting(step_id, step.id)

    def _cancel_waiting(self, step_id: str, cause: str) -> None:
        step, _ = self.waiting.pop(step_id)
        self.states[step_id] = self.hooks.cancel_waiting(step, f"cancelled: step {cause!r} failed (fail_fast)")

    def _resume_decided(self) -> None:
        """Branches whose gate is decided go on: their step is taken up again (and passes the decided gate)."""
        if not self.waiting:
            return
        decided = {gate.step_id for gate in self.hooks.decided([gate for _, gate in self.waiting.values()])}
        for step_id in decided & set(self.waiting):
            step, _ = self.waiting.pop(step_id)
            self.pending.append(step)
        self.pending.sort(key=lambda s: self._position[s.id])

    def _stop_all(self, reason: str) -> None:
        """Stop every running step (recorded interrupted by its own thread) and wait for them all to end."""
        for _, switch in self.running.values():
            switch.stop(reason, cancelled=False)
        wait(list(self.running))
        self.running.clear()
