"""The one error hierarchy every user-facing failure goes through.

The CLI catches `LgError` in exactly one place (`lg.cli.main`) and exits with the error's `exit_code`.
Anything else that escapes is a bug: the CLI writes the traceback to a file and exits 70.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    """Exit codes, documented in the README; every command uses them."""

    OK = 0
    FAILED = 1  # a step or a check failed
    INVALID_INPUT = 2  # a file, argument or configuration is wrong
    AWAITING_APPROVAL = 3  # the run is paused at a gate
    REJECTED = 4  # an approval was rejected or expired, or the run was cancelled
    ENVIRONMENT = 5  # this host cannot do it: no hypervisor, image missing, permission
    INTERNAL = 70  # a bug in lg
    INTERRUPTED = 130  # Ctrl-C


@dataclass(frozen=True)
class Location:
    """Where in a user's file something is: 1-based line and column, and the key path within the document."""

    path: Path | None
    line: int | None = None
    column: int | None = None
    key_path: str = ""

    def __str__(self) -> str:
        parts = [str(self.path) if self.path is not None else "<input>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.column is not None:
                parts.append(str(self.column))
        prefix = ":".join(parts)
        return f"{prefix}: {self.key_path}" if self.key_path else prefix


class LgError(Exception):
    """Base of every error meant for the user. Its message is printed as is, without a traceback."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(LgError):
    """A file, argument or configuration the user gave is wrong."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(self, message: str, location: Location | None = None) -> None:
        super().__init__(message)
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class InvalidInputs(InvalidInput):
    """Several input problems found at once (`lg validate` reports all of them, then exits)."""

    def __init__(self, errors: list[InvalidInput]) -> None:
        super().__init__(f"{len(errors)} error(s)")
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


class StepFailed(LgError):
    exit_code = ExitCode.FAILED


class AwaitingApproval(LgError):
    exit_code = ExitCode.AWAITING_APPROVAL


class ApprovalRejected(LgError):
    """A gate was rejected, or expired without a decision: what it guarded did not happen."""

    exit_code = ExitCode.REJECTED


class RunCancelled(LgError):
    """`lg cancel` stopped the run."""

    exit_code = ExitCode.REJECTED


class EnvironmentUnfit(LgError):
    """This host cannot do what was asked (no usable hypervisor, image missing, permission denied)."""

    exit_code = ExitCode.ENVIRONMENT

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class GateUnavailable(EnvironmentUnfit):
    """A step reached an approval gate, and this version of lg cannot hold gates yet: stop, apply nothing."""


class Interrupted(LgError):
    exit_code = ExitCode.INTERRUPTED


class InternalError(Exception):
    """A bug in lg, detected. Deliberately not an LgError: nothing on the way out mistakes it for a failure of the
    user's run (the engine records no outcome for it), and the CLI keeps the traceback and exits 70."""

    exit_code = ExitCode.INTERNAL
