"""Risk policies as immutable data, and how each kind of rule matches what it looks at."""

from __future__ import annotations

import fnmatch
import functools
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from lg.model import FileChange
from lg.policy.content import ContentMatch
from lg.policy.levels import RiskLevel
from lg.policy.mcp_match import McpMatch
from lg.policy.network import UNKNOWN, NetworkScope
from lg.policy.shell import Assignment, Invocation

RuleKind = Literal["command", "redirect", "allow", "environment", "effects", "relaxation", "mcp"]
WRITE_OPERATORS = frozenset({">", ">>", ">|", "&>", "&>>", ">&", "<>"})
READ_OPERATORS = frozenset({"<", "<>", "<&"})
# Where a program given by path is the system's own copy, or a tool the step installed the usual way (a venv,
# node_modules/.bin): a name found there is what it says. Anywhere else, `ls` may be any file named ls.
TRUSTED_PROGRAM_DIRS = ("/usr/**", "/bin/*", "/sbin/*", "/opt/**", "/snap/bin/*", "/nix/store/**",
                        "**/node_modules/.bin/*", "**/*venv*/bin/*", "**/.tox/*/bin/*", "**/.nox/*/bin/*",
                        "**/vendor/bin/*", "~/.cargo/bin/*", "~/.local/bin/*", "~/go/bin/*", "~/.pyenv/**",
                        "~/.nvm/**", "~/.rustup/**", "~/.sdkman/**", "~/.bun/bin/*", "~/.deno/bin/*")


@dataclass(frozen=True)
class MatchContext:
    """What a command rule may need beyond the command: the step's network, and the names the policy knows."""

    scope: NetworkScope = UNKNOWN
    known: frozenset[str] = frozenset()  # program names the policy allows or names in a rule


DEFAULT_CONTEXT = MatchContext()


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
    path: tuple[str, ...] = ()  # globs on the program as written with a directory (/tmp/**)
    untrusted_path: bool = False  # given with a directory that is neither the system's nor a usual tool install
    code_options: tuple[str, ...] = ()  # globs: runs code through one of these options (git -c core.pager)
    inline: frozenset[str] = frozenset()  # its inline code does one of these: spawn, delete, dynamic, unparsed
    network: frozenset[str] = frozenset()  # it does one of these: fetch, upload, raw
    profile_network: bool | None = None  # the step's profile gives it some network (True) or none (False)
    hosts_allowed: bool | None = None  # every host it names is on the profile's allow-list (True) or not
    runs_download: bool = False  # it runs a file an earlier command downloaded

    def matches(self, invocation: Invocation, context: MatchContext = DEFAULT_CONTEXT) -> bool:
        # Cheapest tests first: this runs for every command against every rule that names its program.
        if invocation.program is None or not _globs(self.programs).match(invocation.program):
            return False
        if not self._matches_facts(invocation, context):
            return False
        flags = invocation.flags
        if any(not _has_flag(group, flags) for group in self.flag_groups):
            return False
        positionals = invocation.positionals
        if self.subcommand and not (positionals and _globs(self.subcommand).match(positionals[0])):
            return False
        if self.args and not any(_args_hit(arg, self.args) for arg in positionals if arg != "$DYNAMIC"):
            return False
        if self.args_regex is not None and not any(self.args_regex.search(word) for word in invocation.words):
            return False
        if self.dynamic_args and "$DYNAMIC" not in invocation.words:
            return False
        if self.piped_from and not set(self.piped_from) & set(invocation.piped_from):
            return False
        return not self.via or bool(set(self.via) & set(invocation.via))

    def _matches_facts(self, invocation: Invocation, context: MatchContext) -> bool:
        if self.path and not (invocation.path and any(path_glob(p).match(invocation.path) for p in self.path)):
            return False
        if self.untrusted_path and trusted_path(invocation.path):
            return False
        if self.code_options and not any(_any_glob(o, self.code_options) for o in invocation.code_options):
            return False
        if self.inline and not self.inline & set(invocation.inline):
            return False
        if self.runs_download and not invocation.runs_download:
            return False
        return self._matches_network(invocation, context.scope)

    def _matches_network(self, invocation: Invocation, scope: NetworkScope) -> bool:
        if self.network and not self.network & set(invocation.network):
            return False
        if self.profile_network is not None and self.profile_network != scope.any:
            return False
        if self.hosts_allowed is not None:
            if not invocation.hosts:  # an install from the configured registry: allowed when the profile has network
                return self.hosts_allowed and scope.known and scope.any
            allowed = scope.known and all(scope.allows(host) for host in invocation.hosts)
            return allowed == self.hosts_allowed
        return True


def trusted_path(path: str) -> bool:
    """A program path in the system's directories or a conventional tool install (or no directory at all)."""
    if not path:
        return True
    normal = posixpath.normpath(path)
    return any(path_glob(pattern).match(normal) for pattern in TRUSTED_PROGRAM_DIRS)


def _has_flag(group: frozenset[str], flags: frozenset[str]) -> bool:
    """Some spelling of the group is present; GNU getopt_long and git accept any unambiguous prefix of a long
    option (`rm --rec --for` is `rm --recursive --force`), so a prefix counts (a wrong one only over-grades)."""
    if group & flags:
        return True
    return any(len(flag) > 3 and spelling.startswith(flag) for flag in flags if flag.startswith("--")
               for spelling in group)


@dataclass(frozen=True)
class RedirectMatch:
    """A file a command writes (a redirection, or an option or argument that names a file it writes), or reads
    through `<` when `reads` is set, whose path matches one of `targets`."""

    targets: tuple[str, ...]
    reads: bool = False

    def matches(self, invocation: Invocation) -> str | None:
        operators = READ_OPERATORS if self.reads else WRITE_OPERATORS
        for operator, target in invocation.redirects:
            if operator in operators and self._hits(target):
                return f"{operator} {target}"
        if not self.reads:
            for option, target in invocation.writes:
                if self._hits(target):
                    return f"{option} {target}"
        return None

    def _hits(self, target: str) -> bool:
        normal = _normal_target(target)
        return any(path_glob(p).match(normal) or path_glob(p).match(target) for p in self.targets)


def _normal_target(target: str) -> str:
    """/etc//passwd and /etc/./x/../passwd are /etc/passwd; a relative path stays relative."""
    return posixpath.normpath(target) if target not in ("", "$DYNAMIC") else target


@dataclass(frozen=True)
class EnvironmentMatch:
    """An environment variable set for the commands of a step: `VAR=v cmd`, `env VAR=v`, `export VAR=v`."""

    names: tuple[str, ...]  # globs on the variable's name
    value_regex: re.Pattern[str] | None = None  # search in the value as written

    def matches(self, assignment: Assignment) -> bool:
        if not _any_glob(assignment.name, self.names):
            return False
        return self.value_regex is None or bool(self.value_regex.search(assignment.value))


@dataclass(frozen=True)
class EffectsMatch:
    paths: tuple[str, ...] = ()
    kinds: frozenset[str] = frozenset({"created", "modified", "deleted"})
    executable: bool = False  # the change leaves a file (not a symlink) executable that was not before
    setuid: bool = False  # the change leaves a file setuid or setgid
    symlink_outside: bool = False  # a symlink pointing outside the workspace
    count_over: int | None = None  # more than this many changes match
    bytes_over: int | None = None  # matching changes add up to more than this many bytes
    content: ContentMatch | None = None  # conditions on what changed inside the files (lg.policy.content)

    def selected(self, changes: Sequence[FileChange]) -> list[FileChange]:
        chosen = [c for c in changes if c.kind in self.kinds]
        if self.paths:  # workspace-relative: a leading '/' means the workspace root
            chosen = [c for c in chosen if any(path_glob(p.lstrip("/")).match(c.path) for p in self.paths)]
        if self.executable:  # a symlink's mode is always 0777 and says nothing about its target
            chosen = [c for c in chosen if c.symlink_target is None and c.executable
                      and not (c.old_mode is not None and c.old_mode & 0o111)]
        if self.setuid:
            chosen = [c for c in chosen if c.symlink_target is None and c.mode is not None and c.mode & 0o6000]
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
    environment: EnvironmentMatch | None = None
    effects: EffectsMatch | None = None
    relaxation: RelaxationMatch | None = None
    mcp: McpMatch | None = None  # a call to an MCP tool (lg.policy.mcp_match)
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
    mcp_default_level: RiskLevel = RiskLevel.YELLOW  # MCP calls no rule matches: never below yellow
    extends: tuple[Path, ...] = ()  # the chain of policies this one builds on, nearest first
    approvals: ApprovalRules = field(default_factory=ApprovalRules)
    required_gates: tuple[RequiredGate, ...] = ()  # inherited ones can never be dropped

    _cache: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def rules_of(self, *kinds: RuleKind) -> tuple[Rule, ...]:
        key = ("kinds", kinds)
        if key not in self._cache:
            self._cache[key] = tuple(rule for rule in self.rules if rule.kind in kinds)
        return self._cache[key]  # type: ignore[no-any-return]

    def command_rules_for(self, program: str, facts: frozenset[str] = frozenset()) -> tuple[Rule, ...]:
        """The command and redirect rules that can match `program` when the command has `facts` (which of
        network, inline, code_options, runs_download, path, files it has). Rules are indexed: grading 500 steps
        must stay well under 0.1 s, and testing every rule against every command did not."""
        key = ("program", program, facts)
        if key not in self._cache:
            self._cache[key] = tuple(rule for rule in self.rules_of("command", "redirect")
                                     if _applies(rule, program) and rule_needs(rule) <= facts)
        return self._cache[key]  # type: ignore[no-any-return]

    @property
    def denied_ids(self) -> frozenset[str]:
        if "denied" not in self._cache:
            self._cache["denied"] = frozenset(rule.id for rule in self.rules if rule.deny)
        return self._cache["denied"]  # type: ignore[no-any-return]

    @property
    def known_programs(self) -> frozenset[str]:
        """Program names the policy allows or names in a rule (no globs): the names a look-alike borrows."""
        if "known" not in self._cache:
            names = {name for rule in self.rules for name in rule.allow}
            names.update(p for rule in self.rules if rule.command for p in rule.command.programs
                         if not any(c in p for c in "*?["))
            self._cache["known"] = frozenset(names)
        return self._cache["known"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RuleMatch:
    rule_id: str
    level: RiskLevel
    reason: str
    span: str | None
    part: str  # command | redirect | environment | effects | relaxation | mcp | analysis | default
    program: str | None = None  # the program the finding is about, unwrapped, with what it was reached through

    def to_json(self) -> dict[str, Any]:
        found = {"rule": self.rule_id, "level": self.level.label, "reason": self.reason, "span": self.span,
                 "part": self.part}
        return {**found, "program": self.program} if self.program else found


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


def _applies(rule: Rule, program: str) -> bool:
    return rule.kind == "redirect" or (rule.command is not None and _any_glob(program, rule.command.programs))


def rule_needs(rule: Rule) -> frozenset[str]:
    """The facts a command must have for `rule` to match it at all (see `invocation_facts`)."""
    if rule.redirect is not None:
        return frozenset({"files"})
    match = rule.command
    if match is None:
        return frozenset()
    wanted = {"network": bool(match.network), "inline": bool(match.inline), "code_options": bool(match.code_options),
              "runs_download": match.runs_download, "path": bool(match.path) or match.untrusted_path}
    return frozenset(name for name, needed in wanted.items() if needed)


def invocation_facts(invocation: Invocation) -> frozenset[str]:
    facts = {"network": bool(invocation.network), "inline": bool(invocation.inline),
             "code_options": bool(invocation.code_options), "runs_download": bool(invocation.runs_download),
             "path": bool(invocation.path), "files": bool(invocation.redirects or invocation.writes)}
    return frozenset(name for name, present in facts.items() if present)


def _any_glob(value: str, patterns: tuple[str, ...]) -> bool:
    return bool(_globs(patterns).match(value))


@functools.lru_cache(maxsize=4096)
def _globs(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled pattern for a rule's list of globs (fnmatch's, case-sensitive): matched once per command."""
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns) or "(?!)")


def _args_hit(arg: str, patterns: tuple[str, ...]) -> bool:
    """An argument as written or normalised (//, /./, trailing slashes: `rm -rf //` is `rm -rf /`)."""
    if _globs(patterns).match(arg):
        return True
    if arg.startswith(("/", "~/")) and len(arg) > 1:
        normal = posixpath.normpath(arg)
        return normal != arg and bool(_globs(patterns).match("/" if normal == "//" else normal))
    return False


def _escapes(path: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    depth = 0
    for part in (PurePosixPath(path).parent / target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False
