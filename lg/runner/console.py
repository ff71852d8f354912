"""Live step output: line-buffered, prefixed with the step id, secrets masked, mirrored to the step's log."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TextIO

from lg.config.secrets import Masker


class StepOutput:
    """Receives raw chunks from a VM as they arrive and prints whole lines as `[step] text`."""

    def __init__(self, step_id: str, mask: Masker, log: IO[str], echo: Callable[[str], None]) -> None:
        self.step_id = step_id
        self.mask = mask
        self.log = log
        self.echo = echo
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def __call__(self, stream: str, chunk: bytes) -> None:
        buffered = self._partial.get(stream, b"") + chunk
        *lines, rest = buffered.split(b"\n")
        self._partial[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._emit(stream, rest)
        self._partial = {"stdout": b"", "stderr": b""}
        self.log.flush()

    def note(self, text: str) -> None:
        """A line from lg itself about this step (boot, retry, applied changes)."""
        masked = self.mask(text)
        self.log.write(f"# {masked}\n")
        self.echo(f"[{self.step_id}] {masked}")

    def _emit(self, stream: str, raw: bytes) -> None:
        text = self.mask(raw.decode("utf-8", "replace").rstrip("\r"))
        self.log.write(f"{text}\n" if stream == "stdout" else f"! {text}\n")
        self.log.flush()  # `lg logs` of a running step, and a killed lg, see every line that was printed
        self.echo(f"[{self.step_id}] {text}")


def line_atomic(echo: Callable[[str], None]) -> Callable[[str], None]:
    """`echo`, one call at a time: steps running at once print from threads of their own, and a line (or a
    gate's card) is never cut by another step's."""
    lock = threading.Lock()

    def locked(text: str) -> None:
        with lock:
            echo(text)

    return locked


def open_log(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("a", encoding="utf-8")


def echo_stdout(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
