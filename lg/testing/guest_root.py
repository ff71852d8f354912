"""A host directory standing for a guest's filesystem: guest `/workspace/a.txt` is `<root>/workspace/a.txt`.

Used by lg.testing.fake. The mapping keeps lg's own requests inside the directory: a guest path is refused if it
is relative or has `..` (as the guest agent refuses it), and if it leads outside the directory through a symlink
a command planted there. That guards tests against lg's mistakes, not against the commands, which run on the
host with the test's own rights and can write anywhere those reach: this is not a security boundary.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from lg.guest.files import check_guest_dir
from lg.guest.protocol import ErrorCode, ProtocolError
from lg.vm.api import AgentFailure


class GuestRoot:
    def __init__(self, path: Path) -> None:
        self.path = path

    def host_path(self, guest_path: str) -> Path:
        """Where guest `guest_path` (absolute, no `..`) is on the host; AgentFailure as the agent would answer."""
        try:
            normal = check_guest_dir(guest_path)
        except ProtocolError as problem:
            raise AgentFailure(f"guest agent: {problem.message}", problem.code) from None
        mapped = self.path.joinpath(*PurePosixPath(normal).parts[1:])
        if not mapped.resolve().is_relative_to(self.path.resolve()):
            raise AgentFailure(f"guest agent: {guest_path!r} leads outside the VM's directory through a symlink",
                               ErrorCode.UNSAFE)
        return mapped

    def map_word(self, word: str) -> str:
        """An argv word or env value, with a guest path in it mapped: one absolute path (no whitespace, no `:`)
        whose top directory exists in the root, as the directories lg creates (`/workspace`, `/run/lg`, `/tmp`)
        do. Anything else (`/bin/sh`, a PATH list, a script) is the host's, and unchanged."""
        if not word.startswith("/") or any(char.isspace() or char == ":" for char in word):
            return word
        parts = PurePosixPath(word).parts
        if len(parts) < 2 or ".." in parts or not (self.path / parts[1]).exists():
            return word
        return str(self.path.joinpath(*parts[1:]))
