"""Execute a run: order steps, give each a fresh VM, stop at gates, apply effects, record it all.

No step ever runs on the host. Each attempt of each step boots its own VM, which is destroyed when the attempt
ends, whatever happens: a VM that ran one step is never reused for another, and no VM is ever kept alive while
a run waits for a human.

Every transition is in the state database before it takes effect, so a run can stop at a gate (or be killed)
and be finished by `lg resume` from another process: steps that ended are not run again, a step that was
running is run again from scratch in a fresh VM (nothing of it was applied), held effects wait in the state
directory, and effects that were being applied are finished idempotently.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from lg.approvals.card import CardInput, build
from lg.approvals.decide import current_user
from lg.config.inputs import template_values
from lg.config.pipeline import topological_order
from lg.config.secrets import SecretValues
from lg.config.templates import Scope, TemplateProblem, is_template, render
from lg.errors import (
    ApprovalRejected,
    AwaitingApproval,
    EnvironmentUnfit,
    ExitCode,
    Interrupted,
    LgError,
    RunCancelled,
    StepFailed,
)
from lg.inputs.run_inputs import RunInputs
from lg.model import FileChange, Pipeline, ProjectConfig, Step
from lg.policy.content import DirContent
from lg.policy.grade import grade_effects, grade_script
from lg.policy.model import Assessment, RiskPolicy
from lg.pool.key import PoolKey
from lg.pool.provider import VmProvider, open_provider
from lg.runner.agent_step import AgentAttempt, run_agent_attempt, snapshot_root, task_sha256
from lg.runner.conditions import skip_reason
from lg.runner.console import StepOutput, line_atomic, open_log
from lg.runner.effects import already_applied, apply_held, base_digests, discard, effects_dir, file_sha256
from lg.runner.gating import BranchWaiter, GateNeed, Waiter, before_gate, effects_gate
from lg.runner.interrupts import POLL_SECONDS, CancelWatch, cancel_requested, deferred
from lg.runner.landing import Landing
from lg.runner.scheduler import Scheduler, limit_note, max_parallel
from lg.runner.secret_outputs import masked_result
from lg.runner.step_vm import GUEST_WORKSPACE, AttemptResult, StepContext, run_attempt, vm_request, warmup_for
from lg.runner.stopping import StepStopped, StoppableVms, StopSwitch
from lg.runner.vms import RunVms
from lg.runner.workspace import UnsafeChange
from lg.runs.agent_sessions import AgentSessions
from lg.runs.gates import Clock, Gate, GateStore, gate_id_for
from lg.runs.ports import GateStoreLike, RunStoreLike
from lg.runs.states import (
    ENDED_STEPS,
    FAILED_STEPS,
    PASSED_STEPS,
    RAN_STEPS,
    STOPPED_AT_GATE,
    GateStatus,
    RunStatus,
    StepStatus,
)
from lg.runs.store import CancelRequested, RunRecord, RunStore, StepRecord
from lg.security.profile import VmProfile
from lg.vm.api import VmSpec

DEFAULT_STEP_TIMEOUT = 3600.0
"""A step with no `timeout` still ends: an hour is generous for a CI step and bounds a hung guest."""


@dataclass(frozen=True)
class RunRequest:
    inputs: RunInputs  # everything the run reads from files, loaded once (nothing is read again after)
    workspace: Path
    secrets: SecretValues
    echo: Callable[[str], None]
    wait: bool = False  # at a gate: wait for the decision (True) or record the pause and exit 3
    colour: bool = False
    clock: Clock = time.time
    vms: VmProvider | None = None  # None: the pool daemon if one runs, else a pool of the run's own
    on_created: Callable[[RunRecord], None] | None = None  # told the new run's record (reports, progress view)

    @property
    def pipeline(self) -> Pipeline:
        return self.inputs.pipeline

    @property
    def config(self) -> ProjectConfig:
        return self.inputs.config

    @property
    def policy(self) -> RiskPolicy:
        return self.inputs.policy


@dataclass
class StepState:
    status: StepStatus  # one of ENDED_STEPS
    outputs: dict[str, str] = field(default_factory=dict)
    continued: bool = False  # did not succeed, but the run goes on (continue_on_error, on_timeout: continue)


@dataclass(frozen=True)
class RunOutcome:
    run: RunRecord
    exit_code: ExitCode


@dataclass(frozen=True)
class _Run:
    """What every step of one run needs."""

    request: RunRequest
    store: RunStoreLike
    gates: GateStoreLike
    waiter: Waiter
    record: RunRecord
    deadline: float | None
    vms: VmProvider  # the run's (RunVms); while a step runs, its own stoppable view of it (StoppableVms)
    landing: Landing = field(default_factory=Landing)  # steps running at once land their changes one at a time


def run_pipeline(request: RunRequest, store: RunStoreLike) -> RunOutcome:
    pipeline = request.pipeline
    order = topological_order(pipeline)
    record = store.create_run(pipeline.name, pipeline.path, request.workspace, current_user(),
                              [(step.id, step.display_name) for step in order], file_sha256(pipeline.path),
                              request.inputs.files_json(), pipeline.input_values)
    store.start_run(record.id)
    if request.on_created is not None:
        request.on_created(record)
    request.echo(f"run {record.id}: {pipeline.name} ({len(order)} steps) in {request.workspace}")
    return _drive(request, store, record)


def resume_run(request: RunRequest, store: RunStoreLike, record: RunRecord) -> RunOutcome:
    """Go on with a run claimed by `RunStore.claim`: ended steps stay ended, the rest run (or wait) as they would."""
    request.echo(f"run {record.id}: resuming {record.pipeline}")
    return _drive(request, store, record)


def _drive(request: RunRequest, store: RunStoreLike, record: RunRecord) -> RunOutcome:
    request = replace(request, echo=line_atomic(request.echo))  # steps print from threads of their own
    pipeline = request.pipeline
    gates = store.gate_store(request.clock)
    vms = RunVms(None, request.vms) if request.vms is not None else RunVms(lambda: open_provider(request.config))
    waiter = BranchWaiter(store, gates, request.echo, request.colour, request.wait, clock=request.clock,
                          before_waiting=vms.park)
    run = _Run(request, store, gates, waiter, record,
               time.monotonic() + pipeline.timeout if pipeline.timeout else None, vms)
    states = _restore_states(run)
    try:
        every = POLL_SECONDS if isinstance(store, RunStore) else REMOTE_CANCEL_POLL_SECONDS
        with CancelWatch(_cancel_probe(store, record.id), record.id, every):
            _announce_steps(run, [step for step in topological_order(pipeline)
                                  if step.id not in states and not _in_saved_vm(run, step)])
            note = limit_note(pipeline, request.config)
            if note is not None:
                request.echo(f"run {record.id}: {note}")
            Scheduler(pipeline, states, _Hooks(run), max_parallel(pipeline, request.config)).run()
    except KeyboardInterrupt:
        if store.run(record.id).cancel_requested is not None:  # `lg cancel`'s SIGTERM, or our CancelWatch
            raise _cancelled(run) from None
        store.finish_run(record.id, RunStatus.INTERRUPTED, ExitCode.INTERRUPTED, "interrupted by the user")
        raise Interrupted(f"run {record.id} interrupted; nothing from the running step was applied "
                          f"(lg resume {record.id} goes on)") from None
    except CancelRequested:  # the store refused a step of a run `lg cancel` asked to stop
        raise _cancelled(run) from None
    except (AwaitingApproval, RunCancelled):
        raise  # the pause (or the cancellation) is already recorded
    except LgError as error:
        store.finish_run(record.id, RunStatus.FAILED, error.exit_code, str(error))
        raise
    finally:
        vms.close()  # the run's own pool: its idle VMs go with it (a shared one is left to its owner)
    try:
        return _conclude(run, states)
    except CancelRequested:  # asked after the last step ended: the run does not end any other way
        raise _cancelled(run) from None


@dataclass(frozen=True)
class _Hooks:
    """What the scheduler (lg.runner.scheduler) has the engine do for one run."""

    run: _Run

    def decide(self, step: Step, states: Mapping[str, StepState]) -> StepState | None:
        return _decide(self.run, step, states)

    def execute(self, step: Step, states: Mapping[str, StepState], switch: StopSwitch) -> StepState:
        try:
            return _run_step(replace(self.run, vms=StoppableVms(self.run.vms, switch)), step, states)
        except StepStopped as stopped:
            if not stopped.cancelled:
                raise
            return StepState(StepStatus.CANCELLED)  # recorded by _execute

    def cancel_waiting(self, step: Step, reason: str) -> StepState:
        run = self.run
        run.store.cancel_step(run.record.id, step.id, reason)
        held = effects_dir(run.store.run_dir(run.record.id), step.id)
        if held.exists():
            discard(held)
            run.store.audit("effects.discarded", run.record.id, step=step.id, reason=reason)
        shutil.rmtree(snapshot_root(run.store.run_dir(run.record.id)) / step.id, ignore_errors=True)  # saved VMs
        run.request.echo(f"[{step.id}] {reason}; nothing of it was applied")
        return StepState(StepStatus.CANCELLED)

    def decided(self, gates: list[Gate]) -> list[Gate]:
        assert isinstance(self.run.waiter, BranchWaiter)  # noqa: S101 - _drive makes it
        return self.run.waiter.decided(gates)

    def stall(self, gates: list[Gate]) -> None:
        assert isinstance(self.run.waiter, BranchWaiter)  # noqa: S101 - _drive makes it
        self.run.waiter.stall(self.run.record, gates)


def _cancelled(run: _Run) -> RunCancelled:
    """Finish `lg cancel`'s work from inside the run's own process: the run, its unfinished steps and open gates
    cancelled in one transaction, held effects discarded. (`lg cancel` does the same itself when the process
    is gone before doing it.)"""
    store, run_id = run.store, run.record.id
    current = store.run(run_id)
    reason = (current.cancel_requested or {}).get("reason") or "cancelled with lg cancel"
    if not current.finished_for_good:
        store.cancel(run_id, reason)
        discard_held(store, run_id, "run cancelled")
    elif current.status is not RunStatus.CANCELLED:
        return RunCancelled(f"run {run_id} had already ended ({current.status}) when it was cancelled")
    return RunCancelled(f"run {run_id} cancelled ({reason}); the running step was stopped and its VM destroyed; "
                        "nothing more of the run ran or was applied")


def discard_held(store: RunStoreLike, run_id: str, reason: str) -> None:
    """Discard every step's held effects of a run that will never apply them, each with its audit record."""
    held = store.run_dir(run_id) / "effects"
    for step_dir in sorted(held.iterdir()) if held.is_dir() else []:
        discard(step_dir)
        store.audit("effects.discarded", run_id, step=step_dir.name, reason=reason)
    saved = snapshot_root(store.run_dir(run_id))  # VMs agent steps saved at their tool-call gates
    if saved.is_dir():
        shutil.rmtree(saved, ignore_errors=True)


def _announce_steps(run: _Run, steps: list[Step]) -> None:
    """Tell the pool which VMs the steps to come will lease, so it restores them while earlier steps run.
    Steps with network allow-lists are not pooled; a step whose profile or image fails to load is left to
    fail in its turn, with its own error."""
    wanted: dict[PoolKey, tuple[VmSpec, VmProfile, int]] = {}
    seen: dict[tuple[str | None, str | None, str | None], tuple[PoolKey, VmSpec, VmProfile] | None] = {}
    for step in steps:
        shape = (step.profile, step.image, step.hypervisor)  # a 500-step pipeline has a handful of these
        if shape not in seen:
            seen[shape] = _pool_request(run, step)
        found = seen[shape]
        if found is not None:
            key, spec, profile = found
            wanted[key] = (spec, profile, wanted.get(key, (spec, profile, 0))[2] + 1)
    for key, (spec, profile, count) in wanted.items():
        run.vms.expect(key, spec, count, warmup_for(profile))


REMOTE_CANCEL_POLL_SECONDS = 2.0
"""How often a run recorded on a server asks it whether `lg cancel` was said (one HTTP request each)."""


def _cancel_probe(store: RunStoreLike, run_id: str) -> Callable[[], bool]:
    """How the cancel watch looks for `lg cancel`'s request: a SQLite file on a read-only connection of its own
    (never queued behind the run's own statements); PostgreSQL or a server through the store itself."""
    if isinstance(store, RunStore) and store.url is None:
        return partial(cancel_requested, store.path, run_id)

    def asked() -> bool:
        try:
            return store.run(run_id).cancel_requested is not None
        except LgError:  # unreachable or damaged for a moment: the next look, or the store's refusal, tells
            return False

    return asked


def _in_saved_vm(run: _Run, step: Step) -> bool:
    """An agent step paused at a tool-call gate goes on in its saved VM: the pool need not make it one (which
    would take the CPU the restore needs)."""
    if step.agent is None or not isinstance(run.store, RunStore):
        return False
    session = AgentSessions(run.store).get(run.record.id, step.id)
    return session is not None and session.gate_id is not None


def _pool_request(run: _Run, step: Step) -> tuple[PoolKey, VmSpec, VmProfile] | None:
    try:
        profile = _profile(run, step)
        if profile.network is not None:
            return None
        key, spec = vm_request(run.request.inputs, step, profile)
    except LgError:
        return None
    return key, spec, profile


def _conclude(run: _Run, states: Mapping[str, StepState]) -> RunOutcome:
    record, store = run.record, run.store
    order = [step.id for step in run.request.pipeline.steps]
    cancelled = [sid for sid in order if states[sid].status is StepStatus.CANCELLED]
    stopped = [sid for sid in order if states[sid].status not in PASSED_STEPS | {StepStatus.CANCELLED}
               and not states[sid].continued] or cancelled
    gated = [sid for sid in stopped if states[sid].status in STOPPED_AT_GATE]
    if gated:
        rejected = any(states[sid].status is StepStatus.REJECTED for sid in gated)
        status = RunStatus.REJECTED if rejected else RunStatus.EXPIRED
        store.finish_run(record.id, status, ExitCode.REJECTED, f"gate {status}: step(s) {', '.join(gated)}")
        raise ApprovalRejected(f"run {record.id} stopped: the gate of step(s) {', '.join(gated)} was {status}; "
                               "nothing it guarded was applied")
    if stopped:
        also = f"; cancelled: {', '.join(cancelled)}" if cancelled and cancelled != stopped else ""
        store.finish_run(record.id, RunStatus.FAILED, ExitCode.FAILED, f"step(s) failed: {', '.join(stopped)}{also}")
        raise StepFailed(f"run {record.id} failed: step(s) {', '.join(stopped)} failed{also} (lg logs {record.id})")
    expired = [sid for sid, state in states.items() if state.status is StepStatus.EXPIRED]
    code = ExitCode.REJECTED if expired else ExitCode.OK
    store.finish_run(record.id, RunStatus.SUCCEEDED, code,
            f"gate expired, run went on: {', '.join(expired)}" if expired else None)
    run.request.echo(f"run {record.id}: succeeded")
    return RunOutcome(store.run(record.id), code)


def _restore_states(run: _Run) -> dict[str, StepState]:
    """The steps a resumed run already finished, as they ended (a new run has none)."""
    states = {}
    for step_record in run.store.steps(run.record.id):
        if step_record.status in ENDED_STEPS:
            step = run.request.pipeline.step(step_record.step_id)
            states[step.id] = StepState(step_record.status, dict(step_record.outputs),
                                        _continues(run, step, step_record.status))
    return states


def _continues(run: _Run, step: Step, status: StepStatus) -> bool:
    if status in FAILED_STEPS:
        return step.continue_on_error
    if status is StepStatus.EXPIRED:
        gate = next((g for g in run.gates.gates(run.record.id)
                     if g.step_id == step.id and g.status is GateStatus.EXPIRED), None)
        on_timeout = gate.rules.on_timeout if gate else "reject"
        return on_timeout == "continue" or (on_timeout == "fail" and step.continue_on_error)
    return False


def _template_context(run: _Run, step: Step, states: Mapping[str, StepState]) -> dict[str, object]:
    pipeline = run.request.pipeline
    steps = {
        sid: Scope(f"steps.{sid}", {"outputs": Scope(f"steps.{sid}.outputs", s.outputs), "status": s.status.value})
        for sid, s in states.items()
    }
    return {
        "vars": Scope("vars", pipeline.vars),
        "inputs": Scope("inputs", template_values(pipeline.input_values)),
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


def _decide(run: _Run, step: Step, states: Mapping[str, StepState]) -> StepState | None:
    """Whether a step whose needs have ended runs (None), or how it ends without running (recorded). Decided in
    the run's main thread, before the step's own starts (lg.runner.conditions)."""
    if run.store.step(run.record.id, step.id).status in RAN_STEPS:
        return None  # a resumed run: the step ran; its effects wait or were landing
    try:
        skip = skip_reason(run.request.pipeline, step, states, _template_context(run, step, states))
    except TemplateProblem as problem:
        _end_step(run, step, StepStatus.FAILED, f"if: {problem.message}")
        return StepState(StepStatus.FAILED, continued=step.continue_on_error)
    if skip is not None:
        run.store.skip_step(run.record.id, step.id, skip)
        run.request.echo(f"[{step.id}] {skip}")
        return StepState(StepStatus.SKIPPED)
    _render_here(run, step, states)
    return None


def _render_here(run: _Run, step: Step, states: Mapping[str, StepState]) -> None:
    """Render the step's run-time templates once in the run's main thread, the only one where a template that
    runs too long is stopped (lg.config.templates.render_deadline): the step's thread renders them again from
    the same values, so it cannot spin longer. A template that fails fails the run here, as it always did."""
    context = _template_context(run, step, states)
    _runtime_text(step.run or "", context, f"step {step.id} run")
    for name, value in step.env.items():
        _runtime_text(value, context, f"step {step.id} env.{name}")


def _run_step(run: _Run, step: Step, states: Mapping[str, StepState]) -> StepState:
    """One step that runs (lg.runner.scheduler calls it in a thread of its own, once _decide said it runs)."""
    record = run.store.step(run.record.id, step.id)
    context = _template_context(run, step, states)
    if record.status in RAN_STEPS:  # a resumed run: the step ran; its effects wait or were landing
        shown = step.agent.task if step.agent is not None else step.run or ""
        return _settle_effects(run, step, record, _runtime_text(shown, context, f"step {step.id} run"))
    script = _runtime_text(step.run or "", context, f"step {step.id} run")
    env = {name: _runtime_text(value, context, f"step {step.id} env.{name}") for name, value in step.env.items()}
    profile = _profile(run, step)
    assessment = _grade_before(run, step, script, profile)
    if assessment.denied:
        rules = ", ".join(m.rule_id for m in assessment.matches if m.level >= run.request.policy.thresholds.before)
        _end_step(run, step, StepStatus.FAILED, f"denied by policy {run.request.policy.name}: {rules}")
        return StepState(StepStatus.FAILED, continued=step.continue_on_error)
    need = before_gate(run.request.policy, step, assessment)
    if need is not None:
        shown = script if step.agent is None else _runtime_text(step.agent.task, context, f"step {step.id} task")
        gate = _open_gate(run, step, need, CardInput(
            run.record.id, step.id, step.display_name, need.kind, gate_id_for(step.id, need.kind), shown, profile,
            assessment, need.reasons))
        closed = _pass(run, step, gate, StepStatus.AWAITING_APPROVAL)
        if closed is not None:
            return closed
    if step.agent is not None:
        return _execute_agent(run, step, env, profile, context)
    return _execute(run, step, script, env, profile)


def _profile(run: _Run, step: Step) -> VmProfile:
    return run.request.inputs.profile_for(step)


def _grade_before(run: _Run, step: Step, script: str, profile: VmProfile) -> Assessment:
    assessment = grade_script(run.request.policy, script, profile.relaxations())
    run.store.grade_step(run.record.id, step.id, assessment.to_json())
    return assessment


def _end_step(run: _Run, step: Step, status: StepStatus, detail: str) -> None:
    run.store.end_step(run.record.id, step.id, status, detail)
    run.request.echo(f"[{step.id}] {run.request.secrets.masker()(detail)}")


def _open_gate(run: _Run, step: Step, need: GateNeed, card_input: CardInput) -> Gate:
    subject, card = build(card_input, run.request.secrets.masker())
    return run.gates.open(run.record.id, step.id, need.kind, subject, card, need.rules)


def _pass(run: _Run, step: Step, gate: Gate, waiting_status: StepStatus) -> StepState | None:
    """Wait at `gate`. None: approved, go on. A StepState: the gate closed otherwise, and this is how the step
    ended."""
    if gate.is_open:
        run.store.wait_at_gate(run.record.id, step.id, waiting_status, gate.gate_id)
    decided = run.waiter.until_decided(run.record, gate)
    if decided.status is GateStatus.APPROVED:
        run.store.note_step(run.record.id, step.id, f"gate {gate.gate_id} {decided.outcome}")
        run.request.echo(f"[{step.id}] gate {gate.gate_id} {decided.outcome}")
        return None
    status = StepStatus.REJECTED if decided.status is GateStatus.REJECTED else StepStatus.EXPIRED
    _end_step(run, step, status, f"gate {gate.gate_id} {decided.outcome or decided.status}; nothing it guarded "
                                 "was applied")
    return StepState(status, continued=status is StepStatus.EXPIRED and _continues(run, step, status))


def _execute(run: _Run, step: Step, script: str, env: Mapping[str, str], profile: VmProfile) -> StepState:
    request, store, record = run.request, run.store, run.record
    log_path = store.run_dir(record.id) / f"{step.id}.log"
    store.start_step(record.id, step.id, log_path, hashlib.sha256(script.encode()).hexdigest())
    mask = request.secrets.masker()
    held = effects_dir(store.run_dir(record.id), step.id)
    result: AttemptResult | None = None
    with open_log(log_path) as log:
        output = StepOutput(step.id, mask, log, request.echo)
        for attempt in range(1, step.retries + 2):
            if attempt > 1:
                output.note(f"retry {attempt - 1} of {step.retries} in a fresh VM")
                store.retry_step(record.id, step.id, attempt)
            context = StepContext(request.inputs, step, request.workspace, script,
                                  {**request.pipeline.env, **env, **request.secrets.values},
                                  _step_timeout(step, run.deadline), record.id, store.run_dir(record.id), output,
                                  profile, held, run.vms)
            try:
                result = run_attempt(context)
            except KeyboardInterrupt as stop:
                output.flush()
                discard(held)
                if isinstance(stop, StepStopped) and stop.cancelled:  # another step failed (fail_fast)
                    store.cancel_step(record.id, step.id, f"{stop.reason}; VM stopped, nothing applied")
                    request.echo(f"[{step.id}] {stop.reason}; VM stopped, nothing applied")
                    raise
                store.end_step(record.id, step.id, StepStatus.INTERRUPTED, "interrupted; VM destroyed, nothing applied",
                               audited=False)  # the run's record of its interruption says it
                raise
            except EnvironmentUnfit as refused:
                # The profile asks for a control this host cannot enforce: no VM started, nothing ran.
                output.flush()
                store.end_step(record.id, step.id, StepStatus.FAILED, f"refused: {refused.message}",
                               audited=False)  # the run's record of its failure says it
                raise
            output.flush()
            result = masked_result(result, mask, output.note)  # no declared secret in stored outputs
            store.record_attempt(record.id, step.id, result)
            if result.status is StepStatus.SUCCEEDED:
                break
            output.note(result.detail or result.status)
    assert result is not None  # noqa: S101 - the loop runs at least once
    if result.status is not StepStatus.SUCCEEDED:
        store.end_attempts(record.id, step.id, result.status)
        request.echo(f"[{step.id}] {mask(f'{result.status}: {result.detail}')}")
        return StepState(result.status, continued=step.continue_on_error)
    return _settle_effects(run, step, store.step(record.id, step.id), script)


def _execute_agent(run: _Run, step: Step, env: Mapping[str, str], profile: VmProfile,
                   context: Mapping[str, object]) -> StepState:
    """An agent step (lg.runner.agent_step): its loop, paused at each tool-call gate, then its effects as any
    step's. The model's API key goes to litellm only, and the VM gets no secret at all: whatever its commands
    print goes to the model's endpoint."""
    request, store, record = run.request, run.store, run.record
    agent = step.agent
    assert agent is not None  # noqa: S101 - the caller checked
    task = _runtime_text(agent.task, context, f"step {step.id} with.task")
    log_path = store.run_dir(record.id) / f"{step.id}.log"
    store.start_step(record.id, step.id, log_path, task_sha256(task))
    mask = request.secrets.masker()
    held = effects_dir(store.run_dir(record.id), step.id)
    values = request.secrets.values
    vm_env = {**request.pipeline.env, **env, "LG_RUN_ID": record.id, "LG_STEP_ID": step.id,
              "LG_WORKSPACE": GUEST_WORKSPACE, "CI": "true"}
    with open_log(log_path) as log:
        output = StepOutput(step.id, mask, log, request.echo)
        step_context = StepContext(request.inputs, step, request.workspace, task, vm_env,
                                   _step_timeout(step, run.deadline), record.id, store.run_dir(record.id), output,
                                   profile, held, run.vms)
        if not isinstance(store, RunStore) or not isinstance(run.gates, GateStore):  # lg.cli.remote_run refuses it
            raise EnvironmentUnfit(f"agent step {step.id} needs the local state store (not a server's)")
        try:
            outcome = run_agent_attempt(AgentAttempt(step_context, agent, values.get(agent.api_key or ""), store,
                                                     run.gates, mask, request.config.model_prices))
        except KeyboardInterrupt as stop:
            output.flush()
            discard(held)
            if isinstance(stop, StepStopped) and stop.cancelled:
                store.cancel_step(record.id, step.id, f"{stop.reason}; VM stopped, nothing applied")
                request.echo(f"[{step.id}] {stop.reason}; VM stopped, nothing applied")
                raise
            store.end_step(record.id, step.id, StepStatus.INTERRUPTED, "interrupted; VM destroyed, nothing applied",
                           audited=False)
            raise
        output.flush()
        if isinstance(outcome, Gate):
            store.wait_at_gate(record.id, step.id, StepStatus.AWAITING_APPROVAL, outcome.gate_id)
            run.waiter.until_decided(record, outcome)  # the branch pauses (BranchPaused) while the gate is open
            return _execute_agent(run, step, env, profile, context)  # decided: the loop goes on from the gate
        result = masked_result(outcome, mask, output.note)
        store.record_attempt(record.id, step.id, result)
    if result.status is not StepStatus.SUCCEEDED:
        store.end_attempts(record.id, step.id, result.status)
        request.echo(f"[{step.id}] {mask(f'{result.status}: {result.detail}')}")
        return StepState(result.status, continued=step.continue_on_error)
    return _settle_effects(run, step, store.step(record.id, step.id), task)


def _settle_effects(run: _Run, step: Step, record: StepRecord, script: str) -> StepState:
    """The step ran and succeeded: grade what it did, hold it for approval if it must, then apply or discard."""
    changes = tuple(FileChange(**change) for change in record.changes)
    held = effects_dir(run.store.run_dir(run.record.id), step.id)
    base: dict[str, str | None] | None = None
    graded: dict[str, Any] | None = None
    if record.status is not StepStatus.APPLYING:
        effects = grade_effects(run.request.policy, changes, DirContent(run.request.workspace, held))
        need = effects_gate(run.request.policy, step, effects, changes)
        graded = effects.to_json()
        if effects.denied or need is not None:  # else the grade commits with "applying" (one fsync fewer)
            run.store.grade_effects(run.record.id, step.id, graded)
            graded = None
        if effects.denied:
            rules = ", ".join(m.rule_id for m in effects.matches if m.level >= run.request.policy.thresholds.effects)
            discard(held)
            _end_step(run, step, StepStatus.FAILED, f"effects denied by {rules}; nothing was applied")
            run.store.audit("effects.discarded", run.record.id, step=step.id, reason="denied by policy")
            return StepState(StepStatus.FAILED, continued=step.continue_on_error)
        if need is not None:
            gate = _effects_gate(run, step, record, need, effects, changes, held, script)
            base = {c["path"]: c["base_sha256"] for c in gate.subject.get("changes", [])}
            closed = _pass(run, step, gate, StepStatus.HELD)
            if closed is not None:
                discard(held)
                run.store.audit("effects.discarded", run.record.id, step=step.id, gate=gate.gate_id,
                                reason=gate.status if closed.status is not StepStatus.REJECTED else closed.status)
                return closed
    else:
        gate_record = run.gates.gate(run.record.id, gate_id_for(step.id, "effects"))
        if gate_record is not None:
            base = {c["path"]: c["base_sha256"] for c in gate_record.subject.get("changes", [])}
    return _apply(run, step, changes, held, base, dict(record.outputs), graded)


def _effects_gate(run: _Run, step: Step, record: StepRecord, need: GateNeed, effects: Assessment,
                  changes: tuple[FileChange, ...], held: Path, script: str) -> Gate:
    existing = run.gates.gate(run.record.id, gate_id_for(step.id, "effects"))
    if existing is not None and record.status is StepStatus.HELD:
        return existing  # a resumed run: the gate (and the host content it was shown against) stays as opened
    return _open_gate(run, step, need, CardInput(
        run.record.id, step.id, step.display_name, "effects", gate_id_for(step.id, "effects"), script,
        _profile(run, step),
        effects, need.reasons, changes, record.outputs, run.request.workspace, held,
        base_digests(run.request.workspace, changes)))


def _apply(run: _Run, step: Step, changes: tuple[FileChange, ...], held: Path,
           base: Mapping[str, str | None] | None, outputs: dict[str, str],
           effects_grade: dict[str, Any] | None = None) -> StepState:
    store, record = run.store, run.record
    store.applying(record.id, step.id, effects_grade)  # durable before the workspace changes
    try:
        started = store.step(record.id, step.id).started
        # an interrupt (Ctrl-C, lg cancel) waits until the step's effects are all in place
        with deferred(), run.landing.exclusive(step.id, started, changes):
            if not already_applied(run.request.workspace, changes):
                apply_held(run.request.workspace, changes, held, base)
            store.applied(record.id, step.id, changes)
            discard(held)  # applied: the held copy goes now, not left for a cancellation to report as discarded
    except (UnsafeChange, OSError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        discard(held)
        store.audit("effects.discarded", record.id, step=step.id, reason=reason)
        _end_step(run, step, StepStatus.FAILED, f"cannot apply the step's changes to the workspace: {reason}"
                  + ("" if "nothing was applied" in reason else "; nothing was applied"))
        return StepState(StepStatus.FAILED, continued=step.continue_on_error)
    counts = {kind: sum(1 for c in changes if c.kind == kind) for kind in ("created", "modified", "deleted")}
    applied = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    run.request.echo(f"[{step.id}] succeeded" + (f"; applied to the workspace: {applied}" if applied else ""))
    return StepState(StepStatus.SUCCEEDED, outputs)


def _step_timeout(step: Step, deadline: float | None) -> float:
    timeout = step.timeout or DEFAULT_STEP_TIMEOUT
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepFailed("the pipeline's timeout ran out before this step could start")
        timeout = min(timeout, remaining)
    return timeout
