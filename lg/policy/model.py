"""Risk policies as immutable data, and how each kind of rule matches what it looks at."""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from lg.model import FileChange
from lg.policy.levels import RiskLevel
from lg.policy.shell import Invocation

RuleKind = Literal["command", "redirect", "allow", "effects", "relaxation"]
WRITE_OPERATORS = frozenset({">", ">>", ">|", "&>", "&>>", ">&", "<>"})


@functools.lru_cache(maxsize=1024)
def path_glob(pattern: str) -> re.Pattern[str]:
    """gitignore-like: `**` crosses directories, `*` does not; a pattern without '/' matches at any depth."""
    body = pattern.rstrip("/") or "/"
    anchored = "/" in body
    regex = ""
    index = 0
    while index < len(body):
        if body.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif body.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif body[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif body[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(body[index]), index + 1
    prefix = "" if anchored else "(?:.*/)?"
    return re.compile(f"^{prefix}{regex}$")


@dataclass(frozen=True)
class CommandMatch:
    programs: tuple[str, ...]
    flag_groups: tuple[frozenset[str], ...] = ()  # each group: any one spelling must be present
    subcommand: tuple[str, ...] = ()  # globs for the first positional argument
    args: tuple[str, ...] = ()  # globs: some positional argument matches one
    args_regex: re.Pattern[str] | None = None  # some word matches (search)
    dynamic_args: bool = False  # some argument is not static
    piped_from: tuple[str, ...] = ()  # fed by a pipe from one of these programs
    via: tuple[str, ...] = ()  # reached through one of these wrappers or shells

    def matches(self, invocation: Invocation) -> bool:
        if invocation.program is None or not _any_glob(invocation.program, self.programs):
            return False
        flags = invocation.flags
        if any(not (group & flags) for group in self.flag_groups):
            return False
        positionals = invocation.positionals
        if self.subcommand and not (positionals and _any_glob(positionals[0], self.subcommand)):
            return False
        if self.args and not any(_any_glob(arg, self.args) for arg in positionals if arg != "$DYNAMIC"):
            return False
        if self.args_regex is not None and not any(self.args_regex.search(word) for word in invocation.words):
            return False
        if self.dynamic_args and "$DYNAMIC" not in invocation.words:
            return False
        if self.piped_from and not set(self.piped_from) & set(invocation.piped_from):
            return False
        return not self.via or bool(set(self.via) & set(invocation.via))


@dataclass(frozen=True)
class RedirectMatch:
    targets: tuple[str, ...]

    def matches(self, invocation: Invocation) -> str | None:
        for operator, target in invocation.redirects:
            if operator in WRITE_OPERATORS and any(path_glob(p).match(target) for p in self.targets):
                return f"{operator} {target}"
        return None


@dataclass(frozen=True)
class EffectsMatch:
    paths: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({"created", "modified", "deleted"})
    executable: bool = False  # the change leaves a file executable that was not before
    symlink_outside: bool = False  # a symlink pointing outside the workspace
    count_over: int | None = None  # more than this many changes match
    bytes_over: int | None = None  # matching changes add up to more than this many bytes

    def selected(self, changes: Sequence[FileChange]) -> list[FileChange]:
        chosen = [c for c in changes if c.kind in self.kinds]
        if self.paths:  # workspace-relative: a leading '/' means the workspace root
            chosen = [c for c in chosen if any(path_glob(p.lstrip("/")).match(c.path) for p in self.paths)]
        if self.executable:
            chosen = [c for c in chosen if c.executable and not (c.old_mode is not None and c.old_mode & 0o111)]
        if self.symlink_outside:
            chosen = [c for c in chosen if c.symlink_target is not None and _escapes(c.path, c.symlink_target)]
        return chosen

    def matches(self, changes: Sequence[FileChange]) -> list[FileChange]:
        chosen = self.selected(changes)
        if self.count_over is not None and len(chosen) <= self.count_over:
            return []
        if self.bytes_over is not None and sum(c.size or 0 for c in chosen) <= self.bytes_over:
            return []
        return chosen


@dataclass(frozen=True)
class Relaxation:
    """A way a step weakens the default VM profile. Kinds: network, capability, seccomp_off, seccomp_custom,
    apparmor_off, apparmor_custom, memory, vcpus, privileged_user, no_new_privileges_off, writable_path."""

    kind: str
    detail: str = ""


@dataclass(frozen=True)
class RelaxationMatch:
    kinds: frozenset[str]
    details: tuple[str, ...] = ()  # globs on the detail (e.g. CAP_SYS_*)

    def matches(self, relaxation: Relaxation) -> bool:
        if relaxation.kind not in self.kinds:
            return False
        return not self.details or _any_glob(relaxation.detail, self.details)


@dataclass(frozen=True)
class Rule:
    id: str
    level: RiskLevel
    reason: str
    kind: RuleKind
    deny: bool = False
    command: CommandMatch | None = None
    redirect: RedirectMatch | None = None
    allow: tuple[str, ...] = ()
    effects: EffectsMatch | None = None
    relaxation: RelaxationMatch | None = None
    source: str = ""  # file:line where the rule is defined


@dataclass(frozen=True)
class Thresholds:
    before: RiskLevel = RiskLevel.ORANGE  # a pre-run grade at or above this gates the step
    effects: RiskLevel = RiskLevel.ORANGE  # an effects grade at or above this holds the effects for review


OnTimeout = Literal["reject", "fail", "continue"]


@dataclass(frozen=True)
class ApprovalRules:
    """Who may decide gates under this policy, and how a decision must be made."""

    allowed_signers: Path | None = None  # OpenSSH allowed_signers file: principal -> public key
    require_signature: bool = False  # refuse decisions not signed by a key in allowed_signers
    allow_self_approval: bool = False  # may the run's initiator approve their own run's gates?
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # for approvers: [group:NAME]
    timeout: float | None = None  # default gate timeout (seconds); None waits for ever
    on_timeout: OnTimeout = "reject"

    def members(self, approvers: Sequence[str]) -> frozenset[str] | None:
        """Everyone named by `approvers` (names and group:NAME); None when anyone may approve."""
        if not approvers:
            return None
        names: set[str] = set()
        for entry in approvers:
            if entry.startswith("group:"):
                names.update(self.groups.get(entry.removeprefix("group:"), ()))
            else:
                names.add(entry)
        return frozenset(names)


@dataclass(frozen=True)
class RequiredGate:
    """A gate the policy imposes whatever the pipeline says: before steps whose id matches `steps`, or on the
    effects of any step that changes a path matching `paths`."""

    id: str
    reason: str
    steps: tuple[str, ...] = ()  # step id globs: an explicit gate before the step runs
    paths: tuple[str, ...] = ()  # workspace path globs: the effects are held when any change matches
    approvers: tuple[str, ...] = ()
    count: int = 1

    def applies_to_step(self, step_id: str) -> bool:
        return _any_glob(step_id, self.steps)

    def touched(self, changes: Sequence[FileChange]) -> list[FileChange]:
        if not self.paths:
            return []
        return EffectsMatch(paths=self.paths).selected(changes)


@dataclass(frozen=True)
class RiskPolicy:
    name: str
    path: Path
    rules: tuple[Rule, ...]
    thresholds: Thresholds = field(default_factory=Thresholds)
    default_level: RiskLevel = RiskLevel.YELLOW  # programs no rule mentions
    extends: tuple[Path, ...] = ()  # the chain of policies this one builds on, nearest first
    approvals: ApprovalRules = field(default_factory=ApprovalRules)
    required_gates: tuple[RequiredGate, ...] = ()  # inherited ones can never be dropped

    def rules_of(self, *kinds: RuleKind) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.kind in kinds)


@dataclass(frozen=True)
class RuleMatch:
    rule_id: str
    level: RiskLevel
    reason: str
    span: str | None
    part: str  # command | redirect | effects | relaxation | analysis | default

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule_id, "level": self.level.label, "reason": self.reason, "span": self.span,
                "part": self.part}


@dataclass(frozen=True)
class Assessment:
    level: RiskLevel
    matches: tuple[RuleMatch, ...]
    gate: bool
    denied: bool
    unanalysable: bool

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level.label, "gate": self.gate, "denied": self.denied,
                "unanalysable": self.unanalysable, "matches": [m.to_json() for m in self.matches]}


def _any_glob(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _escapes(path: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    depth = 0
    for part in (PurePosixPath(path).parent / target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False
