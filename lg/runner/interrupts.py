"""How a running `lg run` / `lg resume` is stopped: signals, and `lg cancel`'s request in the state store.

Signals. A process inherits its signal dispositions: a `lg run p.yaml &` started by a non-interactive shell
ignores SIGINT (POSIX shells do that to background jobs), so Ctrl-C and `kill -INT` did nothing to it and the
old `lg cancel`, which sent SIGINT, waited for the step to end and then watched the run carry on (issue #20
items 1 and 9). `install()` makes SIGINT and SIGTERM interrupt lg whatever it inherited (SIGHUP too, unless it
was ignored on purpose, as `nohup` does), as Ctrl-C does: the running step's VM is destroyed, nothing of the
step is applied, and the run is recorded as interrupted (exit 130; `lg resume` goes on) or, when `lg cancel`
asked for it, cancelled (exit 4).

The request. `lg cancel` of a live run records the request in the store first (RunStore.request_cancel), then
sends SIGTERM. The store refuses the run any progress from then on, so even a signal that never arrives (another
user's process) cannot let a later step run or apply. While the engine drives a run, a CancelWatch thread
reads the request every POLL_SECONDS and interrupts the main thread itself, so a step is stopped mid-exec either way.

Landing effects is never cut half-way: `deferred()` holds an interrupt back until the block is over.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType, TracebackType

POLL_SECONDS = 0.25
"""How often a running engine looks for `lg cancel`'s request (a read of one row)."""

_deferring = threading.local()
_pending: list[int] = []


def install() -> None:
    """lg's interrupt handlers, whatever dispositions and mask lg inherited. Call in the main thread."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup's choice is kept
        signal.signal(signal.SIGHUP, _interrupt)


def installed() -> bool:
    return signal.getsignal(signal.SIGTERM) is _interrupt


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if getattr(_deferring, "depth", 0):
        _pending.append(signum)
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block to its end; an interrupt that arrives meanwhile is raised after it (a KeyboardInterrupt)."""
    _deferring.depth = getattr(_deferring, "depth", 0) + 1
    try:
        yield
    finally:
        _deferring.depth -= 1
    if not _deferring.depth and _pending:
        signum = _pending.pop()
        _pending.clear()
        raise KeyboardInterrupt(signal.Signals(signum).name)


def cancel_requested(database: Path, run_id: str) -> bool:
    """Whether `lg cancel` asked for the run to stop, read on a read-only connection of the caller's own."""
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return False
    try:
        row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
    except sqlite3.Error:
        return False  # busy or damaged: the next look, or the store's own refusal, will tell
    finally:
        db.close()
    return row is not None and row[0] is not None


class CancelWatch:
    """While the engine drives a run: looks for `lg cancel`'s request and, on one, interrupts the main thread as
    SIGTERM does (a signal sent to the main thread, so that a blocking read of the guest's answer is interrupted
    too). Does nothing unless lg's handlers are installed: a library caller keeps its own signal handling, and
    the store still refuses the cancelled run any progress."""

    def __init__(self, asked: Callable[[], bool], run_id: str, every: float = POLL_SECONDS) -> None:
        """`asked`: whether the run's cancellation is recorded (`cancel_requested` for a SQLite file, or a look
        through the store); it is called on the watch's own thread every `every` seconds."""
        self._asked, self._every = asked, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"lg-cancel-watch-{run_id}", daemon=True)
        self._main = threading.main_thread().ident

    def __enter__(self) -> CancelWatch:
        if installed() and threading.current_thread() is threading.main_thread():
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self._every):
            if self._asked():
                if not self._stop.is_set() and self._main is not None:
                    with suppress(ProcessLookupError):
                        signal.pthread_kill(self._main, signal.SIGTERM)
                return
