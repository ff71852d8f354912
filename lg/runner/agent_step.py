"""One attempt of an agent step (`uses: agent`): the loop of lg.agent.loop with its tool calls run in the step's
VM (lg.runner.agent_tools), paused at a tool-call gate and resumed from a VM snapshot.

At a gate the VM is saved with its backend's snapshot machinery (the pool's, lg.vm.api.SnapshotBackend) under
the run's directory, the conversation is stored with the run (lg.runs.agent_sessions), the gate is opened, and
the VM is destroyed: no VM lives while a human decides. Whenever the step is taken up again (the scheduler once
the gate is decided, or any later `lg resume`), the VM is restored from that snapshot and the loop goes on at
the gated call: run once if approved, answered "denied by the reviewer: REASON" if not. Its changes are then
collected as any step's are, and go through the effects grading and gate (lg.runner.engine).
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from lg.agent.llm import ModelError, ModelSettings, complete
from lg.agent.loop import AgentLoop, Conversation, Decision, Finished, Paused, Stopped
from lg.agent.tools import ToolCall, openai_tools
from lg.approvals.card import CardInput, build
from lg.errors import LgError
from lg.model import AgentSpec, ModelPrice
from lg.runner.agent_mcp import McpTools
from lg.runner.agent_tools import VmToolHost
from lg.runner.gating import gate_rules
from lg.runner.step_vm import (
    GUEST_WORKSPACE,
    AttemptResult,
    StepContext,
    collect_outputs,
    fetch_effects,
    image_kernel,
    lease_note,
    vm_request,
    warmup_for,
)
from lg.runner.workspace import UnsafeChange, check_change_path, exclude_function, load_ignore_rules
from lg.runs.agent_sessions import AgentSession, AgentSessions
from lg.runs.gates import Gate, GateStore
from lg.runs.states import GateStatus, StepStatus
from lg.runs.store import RunStore
from lg.security.enforce import plan_for
from lg.vm.api import SnapshotBackend, Vm, VmSpec


@dataclass(frozen=True)
class AgentAttempt:
    context: StepContext  # its `script` is the rendered task
    spec: AgentSpec
    api_key: str | None  # the secret's value, for litellm only
    store: RunStore
    gates: GateStore
    mask: Callable[[str], str]
    prices: Mapping[str, ModelPrice]

    @property
    def sessions(self) -> AgentSessions:
        return AgentSessions(self.store)


def run_agent_attempt(attempt: AgentAttempt) -> AttemptResult | Gate:
    """The step's outcome, or the open tool-call gate it now waits at."""
    context = attempt.context
    session = attempt.sessions.get(context.run_id, context.step.id)
    host_plan = plan_for(context.profile)
    key, spec = vm_request(context.inputs, context.step, context.profile, host_plan.network)
    try:
        if session is not None and session.gate_id is not None:
            return _resume(attempt, session, key.backend, spec)
        with context.vms.lease(key, spec, warmup=warmup_for(context.profile)) as lease:
            context.output.note(lease_note(lease))
            vm = lease.vm
            exclude = exclude_function(context.workspace, load_ignore_rules(context.workspace))
            vm.put_tree(context.workspace, GUEST_WORKSPACE, exclude, owner=context.profile.uid_gid)
            result = _loop(attempt, vm, key.backend, Conversation.start(context.script), None)
            return replace(result, vm=lease.to_json()) if isinstance(result, AttemptResult) else result
    except UnsafeChange as error:
        return AttemptResult(StepStatus.FAILED, None, str(error), image_digest=spec.image.digest)
    except LgError as error:
        return AttemptResult(StepStatus.FAILED, None, str(error), image_digest=spec.image.digest)


def _resume(attempt: AgentAttempt, session: AgentSession, backend_name: str, spec: VmSpec) -> AttemptResult | Gate:
    context = attempt.context
    assert session.gate_id is not None and session.call is not None  # noqa: S101 - saved together
    gate = attempt.gates.gate(context.run_id, session.gate_id)
    decision: Decision | None = None
    if gate is not None and gate.is_open:
        return gate
    if gate is not None:
        approved = gate.status is GateStatus.APPROVED
        decision = Decision(str(session.call["id"]), approved, "" if approved else _why(attempt, gate))
    # No gate: lg died between saving the VM and opening it. The restored loop grades the call again and
    # opens the gate then.
    if session.snapshot is None or not session.snapshot.is_dir():
        raise LgError(f"the VM saved at gate {session.gate_id} is gone ({session.snapshot}); the step cannot go on")
    backend = _snapshot_backend(attempt, backend_name)
    started = time.monotonic()
    vm = backend.restore(session.snapshot, spec)
    restored = getattr(context.vms, "restored", None)  # a step's StoppableVms: a fail_fast stop reaches this VM
    try:
        if restored is not None:
            restored(vm)
        context.output.note(f"VM {vm.id} restored from the snapshot of gate {session.gate_id} in "
                            f"{time.monotonic() - started:.2f}s; the call is "
                            f"{gate.status if gate is not None else 'graded again'}")
        if gate is not None:
            attempt.store.audit("agent.call.decided", context.run_id, step=context.step.id, gate=gate.gate_id,
                                call=session.call.get("id"), status=str(gate.status), outcome=gate.outcome)
        result = _loop(attempt, vm, backend_name, Conversation.from_json(session.conversation), decision)
    finally:
        if restored is not None:
            restored(None)
        vm.destroy()
    shutil.rmtree(session.snapshot, ignore_errors=True)  # the VM restored from it is gone; it is not needed again
    return result


def _why(attempt: AgentAttempt, gate: Gate) -> str:
    decisions = attempt.gates.decisions(gate)
    comments = [d.comment for d in decisions if d.verdict == "reject" and d.comment]
    return "; ".join(comments) or gate.outcome or str(gate.status)


def _loop(attempt: AgentAttempt, vm: Vm, backend_name: str, conversation: Conversation,
          decision: Decision | None) -> AttemptResult | Gate:
    context, spec = attempt.context, attempt.spec
    host = VmToolHost(vm, context.inputs.policy, context.profile, image_kernel(context), context.env,
                      time.monotonic() + context.timeout, context.output, attempt.store, context.run_id,
                      context.step.id, attempt.mask)
    settings = ModelSettings(spec.model, spec.api_base, attempt.api_key, attempt.prices)
    offered, tools = list(spec.tools), openai_tools(spec.tools)
    if spec.mcp:
        mcp = McpTools.start(spec.mcp, context.inputs.policy, host.record)
        host.mcp = mcp
        offered, tools = offered + mcp.names, openai_tools(spec.tools, mcp.schemas())
    loop = AgentLoop(spec, offered, lambda messages: complete(settings, messages, tools), host, host.deadline)
    base = AttemptResult(StepStatus.FAILED, None, None, accelerator=vm.accelerator,
                         image_digest=context.inputs.image_for(context.step).digest)
    try:
        outcome = loop.run(conversation, decision)
    except ModelError as error:
        _save(attempt, conversation)
        return replace(base, detail=f"{error} ({conversation.spend.summary()})")
    if isinstance(outcome, Paused):
        return _pause(attempt, vm, backend_name, conversation, outcome, host)
    _save(attempt, conversation)
    attempt.store.audit("agent.spend", context.run_id, step=context.step.id, **conversation.spend.to_json())
    if isinstance(outcome, Stopped):
        return replace(base, status=StepStatus.TIMED_OUT if outcome.timed_out else StepStatus.FAILED,
                       detail=outcome.reason)
    assert isinstance(outcome, Finished)  # noqa: S101 - the three outcomes
    context.output.note(f"agent finished: {conversation.spend.summary()}")
    outputs = collect_outputs(vm, context.step)
    changes = tuple(vm.changes(GUEST_WORKSPACE))
    for change in changes:
        check_change_path(context.workspace, change)  # refuse before fetching anything
    fetch_effects(vm, changes, context.effects_dir)
    return replace(base, status=StepStatus.SUCCEEDED, exit_code=0, outputs=outputs, changes=changes)


def _save(attempt: AgentAttempt, conversation: Conversation) -> None:
    context = attempt.context
    attempt.sessions.save(context.run_id, context.step.id, conversation.to_json(), conversation.spend.to_json())


def _pause(attempt: AgentAttempt, vm: Vm, backend_name: str, conversation: Conversation, paused: Paused,
           host: VmToolHost) -> Gate:
    """Save the VM and the conversation, then open the gate (in that order: a gate is never open without the
    state its call would run in). The caller destroys the VM."""
    context = attempt.context
    if context.profile.network is not None:
        # Its network namespace and allow-list are made at boot; a restore would not remake them.
        raise LgError(f"the agent's call {paused.call.name} needs approval, and a VM with a network allow-list "
                      f"(profile {context.profile.name}) cannot be saved at a tool-call gate; nothing was applied")
    gate_id = f"{context.step.id}.tool-{conversation.tool_calls + 1}"
    # A directory of its own for each save: the VM running now may have been restored from an earlier one
    # (the same gate, opened again after lg died before opening it), whose disk still backs it.
    snapshot = snapshot_root(context.run_dir) / context.step.id / f"{gate_id}-{secrets.token_hex(4)}"
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _snapshot_backend(attempt, backend_name).save_snapshot(vm, snapshot)
    context.output.note(f"VM {vm.id} saved in {time.monotonic() - started:.2f}s for gate {gate_id}")
    attempt.sessions.save(context.run_id, context.step.id, conversation.to_json(), conversation.spend.to_json(),
                          gate_id=gate_id, call=paused.call.to_json(), snapshot=snapshot)
    return _open_gate(attempt, gate_id, paused, host.last_diff)


def _open_gate(attempt: AgentAttempt, gate_id: str, paused: Paused, diff: str | None) -> Gate:
    context, policy = attempt.context, attempt.context.inputs.policy
    call, verdict = paused.call, paused.verdict
    threshold = policy.thresholds.effects if call.name == "write_file" else policy.thresholds.before
    reasons = (f"the agent's call {call.name} is graded {verdict.level}, at or over the policy's threshold "
               f"({threshold.label})",)
    subject, card = build(CardInput(
        context.run_id, context.step.id, context.step.display_name, "tool", gate_id, _shown(call), context.profile,
        None, reasons, call=call.to_json(), call_diff=diff), attempt.mask)
    card["level"] = verdict.level
    card["rules"] = list(verdict.grade.get("matches", []))
    return attempt.gates.open(context.run_id, context.step.id, "tool", subject, card,
                              gate_rules(policy, context.step.approve, ()), gate_id=gate_id)


def _shown(call: ToolCall) -> str:
    if call.name == "shell":
        return str(call.arguments.get("command", ""))
    return f"{call.name} {call.path}"


def _snapshot_backend(attempt: AgentAttempt, name: str) -> SnapshotBackend:
    backend = attempt.context.vms.snapshot_backend(name)
    if backend is None:
        raise LgError(f"a tool-call gate needs to save the step's VM, and VMs of {name} leased here cannot be "
                      "saved (with the pool daemon running they live in its process: stop it with lg pool stop)")
    return backend


def task_sha256(task: str) -> str:
    return hashlib.sha256(task.encode()).hexdigest()


def snapshot_root(run_dir: Path) -> Path:
    return run_dir / "agent"
