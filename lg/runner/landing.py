"""Steps running at once land their changes in the one host workspace: one step at a time, and never over a
different change another step landed after this step's workspace was copied into its VM.

Run one after the other, a step saw the changes of every step before it. Run at once, two independent steps
each start from the workspace as it was, and the second to land would silently undo the first's change of the
same file. So a step whose change of a path differs from one landed there by another step since it started is
refused (UnsafeChange: the step fails and nothing of it is applied); the same change twice (the same directory
created by both, the same content written) is no conflict. Steps that need each other never conflict: a step
starts after what it needs has landed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from lg.model import FileChange
from lg.runner.workspace import UnsafeChange


@dataclass(frozen=True)
class _Landed:
    step_id: str
    when: float
    change: FileChange


class Landing:
    """One run's record of what its steps landed, by workspace path (this process's part of the run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._landed: dict[str, _Landed] = {}

    @contextmanager
    def exclusive(self, step_id: str, started: float | None, changes: Sequence[FileChange]) -> Iterator[None]:
        """Land `changes` of a step that started at `started` (time.time()) in the block, alone."""
        with self._lock:
            for change in changes:
                landed = self._landed.get(change.path)
                if landed is not None and landed.step_id != step_id and started is not None \
                        and landed.when >= started and _differ(landed.change, change):
                    raise UnsafeChange(
                        f"{change.path} was changed by step {landed.step_id!r}, which ran at the same time; this "
                        "step's change of it was made without that one (make one step need the other)")
            yield
            now = time.time()
            for change in changes:
                self._landed[change.path] = _Landed(step_id, now, change)


def _differ(one: FileChange, other: FileChange) -> bool:
    return (one.kind, one.sha256, one.mode, one.symlink_target) != (
        other.kind, other.sha256, other.mode, other.symlink_target)
