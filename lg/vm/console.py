"""A VM's serial console log, as a backend writes it to a file: its last lines, for error messages.

Backend-neutral: the QEMU backend reads its own log with it, and so does the pool client for a VM whose VMM
belongs to the pool daemon (it knows only the log's path).
"""

from __future__ import annotations

import re
from pathlib import Path

TAIL_BYTES = 65536  # the last lines are all an error message shows; a chatty guest's log can be large
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def read_console_tail(path: Path, lines: int) -> str | None:
    """The last lines of a serial console log, terminal control sequences removed; None if it is gone."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    cleaned = [_CONTROL.sub("", line.rstrip("\r")) for line in text.splitlines()]
    return "\n".join(cleaned[-lines:])
