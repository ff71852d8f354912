"""A progress line for a step whose VM is slow to come because a pool template is being built: the first VM of
an image and VM profile on a machine waits for that build (a minute under TCG), and a step that printed
nothing meanwhile looked hung. Said once, only when it is so (a live builder's staging directory is in the
template root: lg.pool.templates.building_now), a couple of seconds into the wait."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from lg.pool.templates import building_now

NOTICE_AFTER_SECONDS = 2.0
NOTICE = ("waiting for its VM: the pool is building its template snapshot first (once for an image and VM "
          "profile; `lg pool prepare PIPELINE` builds them ahead)")


class TemplateWaitNotice:
    """`with TemplateWaitNotice(root, note): lease...` calls `note(NOTICE)` once if the lease is still waiting
    after NOTICE_AFTER_SECONDS while a template is being built, never after the block ended."""

    def __init__(self, template_root: Path, note: Callable[[str], None],
                 after: float = NOTICE_AFTER_SECONDS) -> None:
        self.template_root = template_root
        self.note = note
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(after, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> TemplateWaitNotice:
        self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        with self._lock:  # a notice being written finishes before the lease's own note follows it
            self._done = True
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if not self._done and building_now(self.template_root):
                self.note(NOTICE)
