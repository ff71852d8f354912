"""Execute a run: order steps, give each a fresh VM, stream output, collect outputs and changes, record it all.

No step ever runs on the host. Each attempt of each step boots its own VM, which is destroyed when the attempt
ends, whatever happens: a VM that ran one step is never reused for another.
"""

from __future__ import annotations

import getpass
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lg.config.pipeline import topological_order
from lg.config.secrets import SecretValues
from lg.config.templates import Scope, TemplateProblem, evaluate, is_template, render
from lg.errors import (
    EnvironmentUnfit,
    ExitCode,
    GateUnavailable,
    Interrupted,
    LgError,
    StepFailed,
)
from lg.model import Pipeline, ProjectConfig, Step
from lg.policy.grade import grade_script
from lg.policy.model import RiskPolicy
from lg.runner.console import StepOutput, open_log
from lg.runner.step_vm import AttemptResult, StepContext, run_attempt
from lg.runs.store import RunRecord, RunStore
from lg.security.profile import load_vm_profile

DEFAULT_STEP_TIMEOUT = 3600.0
"""A step with no `timeout` still ends: an hour is generous for a CI step and bounds a hung guest."""


@dataclass(frozen=True)
class RunRequest:
    pipeline: Pipeline
    config: ProjectConfig
    workspace: Path
    secrets: SecretValues
    echo: Callable[[str], None]
    policy: RiskPolicy


@dataclass
class StepState:
    status: str  # succeeded | failed | skipped | timed_out
    outputs: dict[str, str] = field(default_factory=dict)
    continued: bool = False  # failed, but continue_on_error let the run go on


@dataclass(frozen=True)
class RunOutcome:
    run: RunRecord
    exit_code: ExitCode


def run_pipeline(request: RunRequest, store: RunStore) -> RunOutcome:
    pipeline = request.pipeline
    order = topological_order(pipeline)
    record = store.create_run(pipeline.name, pipeline.path, request.workspace, _initiator(),
                              [(step.id, step.display_name) for step in order])
    store.update_run(record.id, status="running", started=time.time())
    request.echo(f"run {record.id}: {pipeline.name} ({len(order)} steps) in {request.workspace}")
    deadline = time.monotonic() + pipeline.timeout if pipeline.timeout else None
    states: dict[str, StepState] = {}
    try:
        for step in order:
            states[step.id] = _run_step(request, store, record, step, states, deadline)
    except KeyboardInterrupt:
        _finish(store, record, "interrupted", ExitCode.INTERRUPTED, "interrupted by the user")
        raise Interrupted(f"run {record.id} interrupted; nothing from the running step was applied") from None
    except LgError as error:
        _finish(store, record, "blocked" if isinstance(error, GateUnavailable) else "failed", error.exit_code,
                str(error))
        raise
    failed = [sid for sid, state in states.items() if state.status in ("failed", "timed_out")]
    hard = [sid for sid in failed if not states[sid].continued]
    if hard:
        _finish(store, record, "failed", ExitCode.FAILED, f"step(s) failed: {', '.join(hard)}")
        raise StepFailed(f"run {record.id} failed: step(s) {', '.join(hard)} failed (lg logs {record.id})")
    _finish(store, record, "succeeded", ExitCode.OK, None)
    request.echo(f"run {record.id}: succeeded")
    return RunOutcome(store.run(record.id), ExitCode.OK)


def _finish(store: RunStore, record: RunRecord, status: str, code: int, error: str | None) -> None:
    store.update_run(record.id, status=status, finished=time.time(), exit_code=int(code), error=error)
    store.audit("run.finished", record.id, status=status, exit_code=int(code), error=error)


def _initiator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (containers)
        return "unknown"


def _skip_reason(step: Step, states: Mapping[str, StepState]) -> str | None:
    for need in step.needs:
        state = states.get(need)
        if state is None or (state.status != "succeeded" and not state.continued):
            return f"skipped: needed step {need!r} did not succeed"
    hard_failures = [sid for sid, s in states.items() if s.status in ("failed", "timed_out") and not s.continued]
    if hard_failures:
        return f"skipped: the run stops after {hard_failures[0]!r} failed"
    return None


def _template_context(request: RunRequest, step: Step, states: Mapping[str, StepState]) -> dict[str, object]:
    pipeline = request.pipeline
    steps = {
        sid: Scope(f"steps.{sid}", {"outputs": Scope(f"steps.{sid}.outputs", s.outputs), "status": s.status})
        for sid, s in states.items()
    }
    return {
        "vars": Scope("vars", pipeline.vars),
        "env": Scope("env", pipeline.env),
        "matrix": Scope("matrix", step.matrix),
        "pipeline": Scope("pipeline", {"name": pipeline.name}),
        "steps": Scope("steps", steps),
    }


def _runtime_text(text: str, context: Mapping[str, object], what: str) -> str:
    if not is_template(text):
        return text
    try:
        return render(text, context)
    except TemplateProblem as problem:
        raise StepFailed(f"{what}: {problem.message}") from problem


def _run_step(request: RunRequest, store: RunStore, record: RunRecord, step: Step,
              states: Mapping[str, StepState], deadline: float | None) -> StepState:
    skip = _skip_reason(step, states)
    context = _template_context(request, step, states)
    if skip is None and step.condition is not None:
        try:
            if not evaluate(step.condition, context):
                skip = f"skipped: if: {step.condition}"
        except TemplateProblem as problem:
            skip = None
            store.update_step(record.id, step.id, status="failed", detail=f"if: {problem.message}")
            request.echo(f"[{step.id}] failed: if: {problem.message}")
            return StepState("failed", continued=step.continue_on_error)
    if skip is not None:
        store.update_step(record.id, step.id, status="skipped", detail=skip)
        store.audit("step.skipped", record.id, step=step.id, reason=skip)
        request.echo(f"[{step.id}] {skip}")
        return StepState("skipped")
    if step.approve is not None:
        # Fail closed: until approval gates exist, a step that demands one must not run unapproved.
        raise EnvironmentUnfit(
            f"step {step.id!r} requires an approval gate, and this version of lg cannot hold gates yet; "
            "refusing to run it unapproved",
            fix="remove `approve:` to run it without review, or wait for approval gates",
        )
    return _execute(request, store, record, step, context, deadline)


def _check_before(request: RunRequest, store: RunStore, record: RunRecord, step: Step, script: str) -> bool:
    """Grade the step as it will run (templates rendered). False: denied. Raises at a gate it cannot hold."""
    profile = load_vm_profile(step.profile or request.pipeline.profile, request.config, request.pipeline.path.parent)
    assessment = grade_script(request.policy, script, profile.relaxations())
    store.update_step(record.id, step.id, grade=assessment.to_json())
    store.audit("step.graded", record.id, step=step.id, **assessment.to_json())
    rules = ", ".join(m.rule_id for m in assessment.matches if m.level >= request.policy.thresholds.before)
    if assessment.denied:
        detail = f"denied by policy {request.policy.name}: {rules}"
        store.update_step(record.id, step.id, status="failed", detail=detail, finished=time.time())
        request.echo(f"[{step.id}] {detail}")
        return False
    if assessment.gate:
        store.update_step(record.id, step.id, status="blocked", detail=f"needs approval: {rules}")
        raise GateUnavailable(
            f"step {step.id!r} is graded {assessment.level.label} by policy {request.policy.name} ({rules}) and "
            "needs approval before it runs; this version of lg cannot hold approval gates, so it stops here "
            "with nothing run", fix=f"lg policy explain -- <the step's script> shows why; run {record.id} stopped")
    return True


def _execute(request: RunRequest, store: RunStore, record: RunRecord, step: Step,
             context: Mapping[str, object], deadline: float | None) -> StepState:
    script = _runtime_text(step.run or "", context, f"step {step.id} run")
    if not _check_before(request, store, record, step, script):
        return StepState("failed", continued=step.continue_on_error)
    env = {name: _runtime_text(value, context, f"step {step.id} env.{name}") for name, value in step.env.items()}
    log_path = store.run_dir(record.id) / f"{step.id}.log"
    store.update_step(record.id, step.id, status="running", started=time.time(), log_path=str(log_path))
    store.audit("step.started", record.id, step=step.id, script_sha256=_sha256(script))
    store.audit("step.started", record.id, step=step.id, script_sha256=_sha256(script))
    mask = request.secrets.masker()
    result: AttemptResult | None = None
    with open_log(log_path) as log:
        output = StepOutput(step.id, mask, log, request.echo)
        for attempt in range(1, step.retries + 2):
            timeout = _step_timeout(step, deadline)
            if attempt > 1:
                output.note(f"retry {attempt - 1} of {step.retries} in a fresh VM")
            store.update_step(record.id, step.id, attempts=attempt)
            context_for_vm = StepContext(
                request.pipeline, request.config, step, request.workspace, script,
                {**request.pipeline.env, **env, **request.secrets.values}, timeout, record.id,
                store.run_dir(record.id), output, request.policy,
                load_vm_profile(step.profile or request.pipeline.profile, request.config, request.pipeline.path.parent),
            )
            try:
                result = run_attempt(context_for_vm)
            except KeyboardInterrupt:
                output.flush()
                store.update_step(record.id, step.id, status="interrupted", finished=time.time(),
                                  detail="interrupted; VM destroyed, nothing applied")
                raise
            output.flush()
            _record_attempt(store, record.id, step.id, result)
            if result.status in ("succeeded", "held"):
                break
            output.note(result.detail or result.status)
    if result is None:  # unreachable: the loop runs at least once
        raise StepFailed(f"step {step.id} made no attempt")
    store.update_step(record.id, step.id, status=result.status, finished=time.time())
    if result.status == "held":
        store.audit("effects.discarded", record.id, step=step.id, reason=result.detail)
        request.echo(f"[{step.id}] {mask(result.detail or '')}")
        raise GateUnavailable(f"step {step.id!r}: {result.detail}; this version of lg cannot hold effects for "
                              "approval, so the run stops here", fix=f"lg status {record.id} shows the changes")
    store.audit("step.finished", record.id, step=step.id, status=result.status, exit_code=result.exit_code,
                applied=[{"path": c.path, "kind": c.kind, "sha256": c.sha256} for c in result.changes])
    verdict = "succeeded" if result.status == "succeeded" else f"{result.status}: {result.detail}"
    request.echo(f"[{step.id}] {mask(verdict)}")
    continued = result.status != "succeeded" and step.continue_on_error
    return StepState(result.status, dict(result.outputs), continued)


def _record_attempt(store: RunStore, run_id: str, step_id: str, result: AttemptResult) -> None:
    store.update_step(
        run_id, step_id,
        exit_code=result.exit_code,
        accelerator=result.accelerator,
        image_digest=result.image_digest,
        boot_seconds=result.boot_seconds,
        outputs=dict(result.outputs),
        changes=[change.__dict__ for change in result.changes],
        detail=result.detail,
        effects_grade=dict(result.effects_grade) if result.effects_grade is not None else None,
    )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _step_timeout(step: Step, deadline: float | None) -> float:
    timeout = step.timeout or DEFAULT_STEP_TIMEOUT
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepFailed("the pipeline's timeout ran out before this step could start")
        timeout = min(timeout, remaining)
    return timeout
