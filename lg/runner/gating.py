"""Which gates a step meets, under which rules, and how a run waits at one.

Three kinds of gate: *explicit* (`approve:` on the step, or a policy's required gate naming the step), *before*
(the step's pre-run grade reaches the policy's threshold) and *effects* (what the step did reaches the effects
threshold, or touches a path a policy's required gate names). A pipeline can add gates; it can never remove
or weaken one its policy requires: the policy's approvers, count, timeout and on_timeout win.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lg.approvals.card import render
from lg.errors import AwaitingApproval, RunCancelled
from lg.model import ApprovalSpec, FileChange, Step
from lg.policy.model import Assessment, RequiredGate, RiskPolicy
from lg.runs.gates import Clock, Gate, GateKind, GateRules
from lg.runs.ports import GateStoreLike, RunStoreLike
from lg.runs.states import GateStatus
from lg.runs.store import CancelRequested, RunRecord

POLL_SECONDS = 0.1
"""How often a waiting run looks for a decision: well inside the half second users are promised."""


@dataclass(frozen=True)
class GateNeed:
    kind: GateKind
    reasons: tuple[str, ...]
    rules: GateRules


def before_gate(policy: RiskPolicy, step: Step, assessment: Assessment) -> GateNeed | None:
    required = [gate for gate in policy.required_gates if gate.applies_to_step(step.id)]
    reasons = [f"required by policy {policy.name} ({gate.id}): {gate.reason}" for gate in required]
    if step.approve is not None:
        reasons.insert(0, f"the pipeline asks for approval: {step.approve.reason or 'approve: on the step'}")
    if assessment.gate:
        reasons.append(f"graded {assessment.level.label}, at or over the policy's before threshold "
                       f"({policy.thresholds.before.label})")
    if not reasons:
        return None
    kind: GateKind = "explicit" if step.approve is not None or required else "before"
    return GateNeed(kind, tuple(reasons), gate_rules(policy, step.approve, required))


def effects_gate(policy: RiskPolicy, step: Step, assessment: Assessment,
                 changes: Sequence[FileChange]) -> GateNeed | None:
    required = [gate for gate in policy.required_gates if gate.touched(changes)]
    reasons = [f"required by policy {policy.name} ({gate.id}): {gate.reason} "
               f"({', '.join(c.path for c in gate.touched(changes)[:3])})" for gate in required]
    if assessment.gate:
        reasons.append(f"effects graded {assessment.level.label}, at or over the policy's effects threshold "
                       f"({policy.thresholds.effects.label})")
    if not reasons:
        return None
    return GateNeed("effects", tuple(reasons), gate_rules(policy, step.approve, required))


def gate_rules(policy: RiskPolicy, explicit: ApprovalSpec | None, required: Sequence[RequiredGate]) -> GateRules:
    approvals = policy.approvals
    approvers: tuple[str, ...] = explicit.approvers if explicit else ()
    count = explicit.count if explicit else 1
    timeout, on_timeout = approvals.timeout, approvals.on_timeout
    if explicit is not None and explicit.timeout is not None and not required:
        timeout, on_timeout = explicit.timeout, explicit.on_timeout
    for gate in required:  # the policy's demands win over the pipeline's
        count = max(count, gate.count)
        if gate.approvers:
            approvers = gate.approvers
    eligible = approvals.members(approvers)
    return GateRules(
        approvers=approvers,
        eligible=tuple(sorted(eligible)) if eligible is not None else None,
        count=count,
        require_signature=approvals.require_signature,
        allow_self_approval=approvals.allow_self_approval,
        allowed_signers=str(approvals.allowed_signers) if approvals.allowed_signers else None,
        on_timeout=on_timeout,
        timeout=timeout,
    )


def decide_commands(gate: Gate) -> str:
    return (f"lg show {gate.run_id} {gate.gate_id}\n"
            f"  lg approve {gate.run_id} {gate.gate_id} [--key ~/.ssh/id_ed25519] [--comment TEXT]\n"
            f"  lg reject {gate.run_id} {gate.gate_id} --reason TEXT")


@dataclass
class Waiter:
    """Waits at a gate: returns it once decided, or records the pause and raises AwaitingApproval (exit 3)."""

    store: RunStoreLike
    gates: GateStoreLike
    echo: Callable[[str], None]
    colour: bool
    wait: bool
    sleep: Callable[[float], None] = time.sleep
    clock: Clock = time.time
    before_waiting: Callable[[], None] = lambda: None

    def until_decided(self, record: RunRecord, gate: Gate) -> Gate:
        self.gates.expire_due()
        gate = self.gates.gate(gate.run_id, gate.gate_id) or gate
        if not gate.is_open:
            return gate
        self.echo(render(gate.card, digest=gate.digest, status=gate.status, outcome=gate.outcome,
                         colour=self.colour))
        self.store.pause(record.id, gate.gate_id, waiting=self.wait)
        if not self.wait:
            raise AwaitingApproval(
                f"run {record.id} is waiting for approval at gate {gate.gate_id}; decide with\n  "
                f"{decide_commands(gate)}\nthen continue it with: lg resume {record.id}")
        self.before_waiting()  # no VM stays alive while a human decides (docs/approvals.md)
        self.echo(f"run {record.id}: waiting for a decision on gate {gate.gate_id} (no VM is kept meanwhile):\n  "
                  f"{decide_commands(gate)}")
        while True:
            self.gates.expire_due()
            current = self.gates.gate(gate.run_id, gate.gate_id)
            if current is None or not current.is_open:
                break
            if self.store.run(record.id).cancel_requested is not None:  # `lg cancel`, whatever became of its signal
                raise CancelRequested(f"run {record.id} was cancelled while waiting at gate {gate.gate_id}")
            self.sleep(POLL_SECONDS)
        assert current is not None  # noqa: S101 - gates are never deleted while their run exists
        if current.status is GateStatus.CANCELLED:
            raise RunCancelled(f"run {record.id} was cancelled while waiting at gate {gate.gate_id}")
        self.store.continue_run(record.id, gate.gate_id, current.status,
                                noticed_after=round(self.clock() - (current.decided or self.clock()), 4))
        return current


class BranchPaused(Exception):
    """A step met an open gate: its branch of the run waits there while the others go on (lg.runner.scheduler)."""

    def __init__(self, gate: Gate) -> None:
        super().__init__(f"step {gate.step_id} waits at gate {gate.gate_id}")
        self.gate = gate


@dataclass
class BranchWaiter(Waiter):
    """Waits at gates when steps run as a DAG: a step at an open gate pauses its own branch (BranchPaused) and the
    others go on; only when nothing else can run does the run pause (`stall`), as one Waiter pauses it."""

    def until_decided(self, record: RunRecord, gate: Gate) -> Gate:
        self.gates.expire_due()
        gate = self.gates.gate(gate.run_id, gate.gate_id) or gate
        if not gate.is_open:
            return gate
        self.echo(render(gate.card, digest=gate.digest, status=gate.status, outcome=gate.outcome,
                         colour=self.colour))
        raise BranchPaused(gate)

    def decided(self, gates: Sequence[Gate]) -> list[Gate]:
        """Those of `gates` that are no longer open (expired ones included)."""
        self.gates.expire_due()
        current = [self.gates.gate(gate.run_id, gate.gate_id) for gate in gates]
        return [gate for gate in current if gate is not None and not gate.is_open]

    def stall(self, record: RunRecord, gates: Sequence[Gate]) -> None:
        """Nothing but `gates` is left to pass: record the pause and exit 3, or (--wait) return once one of
        them is decided, no VM kept meanwhile."""
        self.store.pause(record.id, gates[0].gate_id, waiting=self.wait)
        commands = "\n  ".join(decide_commands(gate) for gate in gates)
        named = ("gate " if len(gates) == 1 else "gates ") + ", ".join(gate.gate_id for gate in gates)
        if not self.wait:
            raise AwaitingApproval(f"run {record.id} is waiting for approval at {named}; decide with\n  "
                                   f"{commands}\nthen continue it with: lg resume {record.id}")
        self.before_waiting()  # no VM stays alive while a human decides (docs/approvals.md)
        self.echo(f"run {record.id}: waiting for a decision on {named} (no VM is kept meanwhile):\n  {commands}")
        while not (closed := self.decided(gates)):
            if self.store.run(record.id).cancel_requested is not None:
                raise CancelRequested(f"run {record.id} was cancelled while waiting at gate(s)")
            self.sleep(POLL_SECONDS)
        first = closed[0]
        if first.status is GateStatus.CANCELLED:
            raise RunCancelled(f"run {record.id} was cancelled while waiting at gate {first.gate_id}")
        self.store.continue_run(record.id, first.gate_id, first.status,
                                noticed_after=round(self.clock() - (first.decided or self.clock()), 4))
