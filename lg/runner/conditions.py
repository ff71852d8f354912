"""Whether a step whose needs have all ended runs: its `if:`, its needs, and `fail_fast`.

The status functions an `if:` may call look at the steps it needs, directly or through others (as GitHub
Actions' job-level functions look at a job's ancestors), and at the run's fail-fast stop:
- `success()`: every step it needs succeeded (or failed with continue_on_error), and no failure elsewhere
  stopped the run for it (`fail_fast`);
- `failure()`: a step it needs, directly or not, failed (failed, timed out, or its gate was rejected or expired);
- `cancelled()`: a step it needs was cancelled, or a failure elsewhere stopped the run for it;
- `always()`: true.
An `if:` without any of them means `success() and (if)`; with one, it says itself when the step runs. So a
cleanup step (`needs: [deploy]`, `if: always()`) runs after a failure, and the run's result stays the failure.

Which steps a failure stops (`fail_fast`): the pipeline's `fail_fast` (default true) stops every other step; a
matrix's own `fail_fast` (default: the pipeline's) decides for the other steps of that matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from lg.config.templates import STATUS_FUNCTIONS, evaluate, uses_status
from lg.model import Pipeline, Step
from lg.runs.states import FAILED_STEPS, STOPPED_AT_GATE, StepStatus


class Ended(Protocol):
    """How a step ended, as the engine keeps it (lg.runner.engine.StepState)."""

    @property
    def status(self) -> StepStatus: ...

    @property
    def continued(self) -> bool: ...


def failed(state: Ended) -> bool:
    """The step failed and the run does not go on as if it had not (no continue_on_error)."""
    return state.status in FAILED_STEPS | STOPPED_AT_GATE and not state.continued


def passed(state: Ended) -> bool:
    """What a step that needs this one sees as success."""
    return state.status is StepStatus.SUCCEEDED or state.continued


def stops(pipeline: Pipeline, failure: Step, other: Step) -> bool:
    """Whether `failure`, having failed, stops `other` (cancels it running, skips it before it starts)."""
    group = failure.matrix_group
    if group is not None and other.matrix_group is not None and other.matrix_group.id == group.id:
        return pipeline.fail_fast if group.fail_fast is None else group.fail_fast
    return pipeline.fail_fast


def stopped_by(pipeline: Pipeline, step: Step, states: Mapping[str, Ended]) -> str | None:
    """The first failed step (in the file's order) whose failure stops `step`, if any."""
    for other in pipeline.steps:
        state = states.get(other.id)
        if other.id != step.id and state is not None and failed(state) and stops(pipeline, other, step):
            return other.id
    return None


def upstream(pipeline: Pipeline, step: Step) -> list[str]:
    """Every step `step` needs, directly or through others, in the file's order."""
    seen: set[str] = set()
    frontier = list(step.needs)
    while frontier:
        current = frontier.pop()
        if current not in seen:
            seen.add(current)
            frontier.extend(pipeline.step(current).needs)
    return [other.id for other in pipeline.steps if other.id in seen]


def status_functions(pipeline: Pipeline, step: Step, states: Mapping[str, Ended]) -> dict[str, Callable[[], bool]]:
    before = [states[sid] for sid in upstream(pipeline, step) if sid in states]
    halted = stopped_by(pipeline, step, states) is not None
    needs_passed = all(sid in states and passed(states[sid]) for sid in step.needs)
    answers = (
        lambda: True,
        lambda: needs_passed and not halted,
        lambda: any(failed(state) for state in before),
        lambda: halted or any(state.status is StepStatus.CANCELLED for state in before),
    )
    return dict(zip(STATUS_FUNCTIONS, answers, strict=True))  # always, success, failure, cancelled


def skip_reason(pipeline: Pipeline, step: Step, states: Mapping[str, Ended],
                context: Mapping[str, object]) -> str | None:
    """Why the step is skipped, or None: it runs. Raises TemplateProblem when its `if:` cannot be evaluated."""
    condition = step.condition
    if condition is not None and uses_status(condition):
        functions = status_functions(pipeline, step, states)
        return None if evaluate(condition, {**context, **functions}) else f"skipped: if: {condition}"
    for need in step.needs:
        state = states.get(need)
        if state is None or not passed(state):
            return f"skipped: needed step {need!r} did not succeed"
    halted = stopped_by(pipeline, step, states)
    if halted is not None:
        return f"skipped: the run stops after {halted!r} did not succeed (fail_fast)"
    if condition is not None and not evaluate(condition, context):
        return f"skipped: if: {condition}"
    return None


def runs_after_failure(step: Step) -> bool:
    """A step whose `if:` calls a status function is meant to run whatever happened: fail_fast leaves it be."""
    return step.condition is not None and uses_status(step.condition)
