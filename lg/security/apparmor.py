"""AppArmor profiles (profiles/apparmor/NAME, ordinary AppArmor syntax), compiled by apparmor_parser.

On the host, apparmor_parser checks a profile without loading it (`-Q`, skip kernel load), so a profile that
does not compile is an exit-2 error with the parser's own message, file and line, before any VM starts. In the
guest, the agent loads it into the guest kernel with apparmor_parser and confines the step's command with it
(lg.guest.confine). We never hand-parse AppArmor: the only thing read here is the profile's declared name.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.config import verdicts
from lg.errors import EnvironmentUnfit, InvalidInput, Location

PARSER_TIMEOUT = 60.0
# A profile declaration, as apparmor_parser reads one: `profile NAME ...{`, where NAME may be quoted (what
# Docker, containerd and Podman generate: `profile "docker-default" flags=(...) {`) or a path, or a bare path
# opening a block (`/usr/bin/foo {`, the profile attached to that program). Rule lines end with ',', so they
# are not declarations; a hat (`^name {`) is not a profile.
_PROFILE_NAME = re.compile(
    r'^[ \t]*(?:profile[ \t]+(?:"((?:[^"\\\n]|\\.)+)"|([^\s{"]+))|"(/(?:[^"\\\n]|\\.)*)"|(/[^\s{]*)(?=[ \t]))'
    r'(?:[^\n{,(]|\([^)\n]*\))*\{', re.MULTILINE)
_NOISE = ("Cache read/write disabled", "Kernel needs AppArmor")  # the host kernel may have no AppArmor at all


@dataclass(frozen=True)
class AppArmorProfile:
    name: str  # the profile declared in the file (what the step runs under)
    path: Path
    text: str
    digest: str

    def for_guest(self) -> dict[str, Any]:
        return {"name": self.name, "text": self.text, "digest": self.digest}


def load_apparmor(path: Path) -> AppArmorProfile:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInput(f"AppArmor profile {path}: cannot read it ({error})") from None
    names = [next(part for part in found if part) for found in _PROFILE_NAME.findall(_without_comments(text))]
    if len(names) != 1:
        raise InvalidInput("an lg AppArmor profile file declares exactly one `profile NAME { ... }` "
                           f"(found {len(names)})", Location(path, 1))
    _compile_check(path, text)
    return AppArmorProfile(names[0], path, text, hashlib.sha256(text.encode()).hexdigest())


def _without_comments(text: str) -> str:
    """The text with comments blanked (`#include` and `include` lines are not comments, but no declaration
    either); a `#` inside a quoted name is kept."""
    return re.sub(r'^([^"#\n]*(?:"[^"\n]*"[^"#\n]*)*)#.*$', r"\1", text, flags=re.MULTILINE)


def _compile_check(path: Path, text: str) -> None:
    """apparmor_parser accepts the profile (without loading it). A text this parser accepted before is not
    parsed again (lg.config.verdicts); what it includes from /etc/apparmor.d is not part of that key, and
    the guest compiles the profile again before a step runs under it, refusing the step if that fails."""
    parser = shutil.which("apparmor_parser") or ("/usr/sbin/apparmor_parser"
                                                  if Path("/usr/sbin/apparmor_parser").exists() else None)
    if parser is None:
        raise EnvironmentUnfit("apparmor_parser is not installed; it checks AppArmor profiles before a step runs",
                               fix="apt-get install apparmor (scripts/setup does)")
    checker = verdicts.file_identity(parser)
    if verdicts.passed("apparmor-parse", text.encode(), checker):
        return
    result = subprocess.run(
        [parser, "--skip-kernel-load", "--skip-cache", "--quiet", "--skip-bad-cache", str(path)],
        capture_output=True, text=True, timeout=PARSER_TIMEOUT, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(_NOISE)]
        raise InvalidInput(f"apparmor_parser: {' '.join(lines) or f'exit {result.returncode}'}", Location(path))
    verdicts.remember("apparmor-parse", text.encode(), checker)
