"""The three state machines of the state store: runs, their steps, and their approval gates.

Each status is a StrEnum, so the database keeps the very text it always held (old databases and the schema stay as
they are). Each machine has ONE transition table, from a status to the statuses it may move to, and every set of
statuses lg reasons about (finished runs, ended steps...) is defined here, from the table where it can be.
The store checks each transition against its table inside the transaction that makes it; a refused one is a bug in
lg, never a user's mistake (users get their refusals, such as "already finished", before a transition is tried).

Why the tables look as they do: a run can be stopped at any point (a gate without --wait, Ctrl-C, kill -9) and
taken up again by `lg resume`, possibly under a changed policy (the policy file is not pinned, the pipeline is).
A resumed run takes every step that has not ended from the top again: it may now be skipped, fail its `if:` or
a policy denial, wait at a gate, or run again in a fresh VM. Those re-entries are the self-loops and the
"back" edges below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from lg.errors import InternalError


class RunStatus(StrEnum):
    PENDING = "pending"  # recorded, not started yet
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"  # paused at a gate, durably (the lg process may be gone)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"  # a gate was rejected: what it guarded did not happen
    EXPIRED = "expired"  # a gate ran out of time and its on_timeout stopped the run
    INTERRUPTED = "interrupted"  # Ctrl-C (or lg cancel's signal); `lg resume` goes on
    CANCELLED = "cancelled"  # `lg cancel`: stopped for good


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"  # a gate before the step runs is open
    HELD = "held"  # the step ran; its effects wait for review (stored, not applied)
    APPLYING = "applying"  # approved effects are being written to the workspace
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class GateStatus(StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


AnyStatus = TypeVar("AnyStatus", RunStatus, StepStatus, GateStatus)


class IllegalTransition(InternalError):
    """The store was asked for a transition its table does not have: a bug in lg (exit 70), and nothing changed."""

    def __init__(self, what: str, current: StrEnum, wanted: StrEnum) -> None:
        super().__init__(f"{what}: illegal transition from {current} to {wanted}")
        self.what, self.current, self.wanted = what, current, wanted


@dataclass(frozen=True)
class Machine(Generic[AnyStatus]):
    """One state machine: its transition table, and the checks and sets derived from it."""

    table: Mapping[AnyStatus, frozenset[AnyStatus]]

    def allows(self, current: AnyStatus, wanted: AnyStatus) -> bool:
        return wanted in self.table[current]

    def check(self, what: str, current: AnyStatus, wanted: AnyStatus) -> None:
        if not self.allows(current, wanted):
            raise IllegalTransition(what, current, wanted)

    @property
    def final(self) -> frozenset[AnyStatus]:
        """The statuses nothing leaves."""
        return frozenset(status for status, onward in self.table.items() if not onward)


_R = RunStatus
RUNS: Machine[RunStatus] = Machine({
    # start; or a claim by `lg resume` when the lg process died before starting it
    _R.PENDING: frozenset({_R.RUNNING, _R.CANCELLED}),
    # RUNNING again: `lg resume` claims a run whose lg process is gone (kill -9, a restarted machine)
    _R.RUNNING: frozenset({_R.RUNNING, _R.AWAITING_APPROVAL, _R.SUCCEEDED, _R.FAILED, _R.REJECTED, _R.EXPIRED,
                           _R.INTERRUPTED, _R.CANCELLED}),
    # RUNNING: the waiting lg saw the decision, or `lg resume` claimed it; INTERRUPTED: Ctrl-C while --wait waits
    _R.AWAITING_APPROVAL: frozenset({_R.RUNNING, _R.INTERRUPTED, _R.CANCELLED}),
    _R.INTERRUPTED: frozenset({_R.RUNNING, _R.CANCELLED}),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset(),
    _R.REJECTED: frozenset(),
    _R.EXPIRED: frozenset(),
    _R.CANCELLED: frozenset(),
})

_T = StepStatus
# What taking a step from the top can lead to (engine._run_step): skipped (needs, if:), failed (if: error, policy
# denial), a gate before it (AWAITING_APPROVAL), or running it.
_FROM_THE_TOP = frozenset({_T.SKIPPED, _T.FAILED, _T.AWAITING_APPROVAL, _T.RUNNING})
# A gate that was already closed when the step came to it ends the step directly: decided while the run was
# paused, or while its lg was dead between opening the gate and marking the step as waiting (pending or
# awaiting_approval at a gate before the step; running at the gate on its effects, which the resumed run meets
# again after running the step again). An interrupted step passed its gate before it (approved, or opened again
# on a changed subject) and runs again before it meets the one on its effects.
_GATE_CLOSED = frozenset({_T.REJECTED, _T.EXPIRED})
STEPS: Machine[StepStatus] = Machine({
    _T.PENDING: _FROM_THE_TOP | _GATE_CLOSED | {_T.CANCELLED},
    _T.AWAITING_APPROVAL: _FROM_THE_TOP | _GATE_CLOSED | {_T.CANCELLED},
    # RUNNING again: the step's lg died mid-step; it runs again from scratch in a fresh VM (nothing was applied).
    # No SUCCEEDED: a step's success always goes through APPLYING, even with nothing to apply.
    _T.RUNNING: _FROM_THE_TOP | _GATE_CLOSED | {_T.HELD, _T.APPLYING, _T.TIMED_OUT, _T.INTERRUPTED, _T.CANCELLED},
    _T.INTERRUPTED: _FROM_THE_TOP | {_T.CANCELLED},
    # HELD again: resumed while its gate is still open; FAILED: resumed under a policy that now denies the effects
    _T.HELD: frozenset({_T.HELD, _T.APPLYING, _T.FAILED, _T.REJECTED, _T.EXPIRED, _T.CANCELLED}),
    # APPLYING again: resumed after dying half-way through applying; applying is idempotent
    _T.APPLYING: frozenset({_T.APPLYING, _T.SUCCEEDED, _T.FAILED, _T.CANCELLED}),
    _T.SUCCEEDED: frozenset(),
    _T.FAILED: frozenset(),
    _T.SKIPPED: frozenset(),
    _T.TIMED_OUT: frozenset(),
    _T.REJECTED: frozenset(),
    _T.EXPIRED: frozenset(),
    _T.CANCELLED: frozenset(),
})

_G = GateStatus
# A gate is decided once per subject. OPEN again: the step ran again (or was graded again on resume) and what it
# asks for changed, so the gate starts over on the new subject and decisions on the old one no longer count.
# A cancelled gate belongs to a cancelled run, which never runs again.
GATES: Machine[GateStatus] = Machine({
    _G.OPEN: frozenset({_G.OPEN, _G.APPROVED, _G.REJECTED, _G.EXPIRED, _G.CANCELLED}),
    _G.APPROVED: frozenset({_G.OPEN}),
    _G.REJECTED: frozenset({_G.OPEN}),
    _G.EXPIRED: frozenset({_G.OPEN}),
    _G.CANCELLED: frozenset(),
})

FINISHED_RUNS = RUNS.final
"""Runs that are over for good: nothing resumes, cancels or decides anything of them any more."""

EXECUTING_RUNS = frozenset({_R.PENDING, _R.RUNNING})
"""Runs an lg process should be executing: with that process gone, the run is abandoned (a run paused at a gate
needs no process)."""

ENDED_STEPS = STEPS.final
"""Steps a resumed run keeps as they ended and `lg cancel` leaves alone."""

PASSED_STEPS = frozenset({_T.SUCCEEDED, _T.SKIPPED})
"""Steps after which the run goes on as if nothing happened."""

FAILED_STEPS = frozenset({_T.FAILED, _T.TIMED_OUT})
"""Steps that failed on their own (continue_on_error may let the run go on)."""

STOPPED_AT_GATE = frozenset({_T.REJECTED, _T.EXPIRED})
"""Steps whose gate closed without approval: nothing it guarded happened."""

WAITING_STEPS = frozenset({_T.AWAITING_APPROVAL, _T.HELD})
"""Steps waiting at a gate: before they run, or with their effects held."""

RAN_STEPS = frozenset({_T.HELD, _T.APPLYING})
"""Steps that ran and whose effects are still to be settled (a resumed run goes on from there)."""
