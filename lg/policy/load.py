"""Load risk policies: schema, rule semantics, `extends` chains, and each rule's own examples.

A policy that does not load stops everything that depends on it: there is no "no policy" fallback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lg.config import verdicts
from lg.config.durations import parse_duration
from lg.config.project import project_paths_for, resolve_named_file
from lg.config.schema_check import check_schema
from lg.config.yamlsource import KeyPath, SourceDoc, load_yaml
from lg.errors import InvalidInput, InvalidInputs
from lg.model import FileChange, ProjectConfig, ProjectPaths
from lg.policy.content import ContentMatch, InlineContent, split_content
from lg.policy.levels import RiskLevel
from lg.policy.mcp_match import ArgumentCondition, McpCall, McpMatch, parse_pointer
from lg.policy.model import (
    ApprovalRules,
    CommandMatch,
    EffectsMatch,
    EnvironmentMatch,
    MatchContext,
    RedirectMatch,
    Relaxation,
    RelaxationMatch,
    RequiredGate,
    RiskPolicy,
    Rule,
    RuleKind,
    Thresholds,
)
from lg.policy.network import NONE, UNKNOWN, NetworkScope
from lg.policy.schema import policy_schema

_FLAG = re.compile(r"^(-[A-Za-z0-9]|--[A-Za-z0-9][A-Za-z0-9-]*)$")
MATCH_KINDS: tuple[RuleKind, ...] = ("command", "redirect", "allow", "environment", "effects", "relaxation", "mcp")



def load_policy(name_or_path: str, config: ProjectConfig, relative_to: Path) -> RiskPolicy:
    """A policy by name (profiles/risk/NAME.yaml, the project's first) or by path."""
    path = resolve_named_file(name_or_path, config.paths.risk_policies, relative_to, "risk policy")
    return load_policy_file(path, config.paths)


def load_policy_file(path: Path, paths: ProjectPaths | None = None) -> RiskPolicy:
    """The policy in `path`; `extends: NAME` is looked up in `paths` (default: the project around the file)."""
    return _load(path.resolve(), (), paths or project_paths_for(path.parent))


def _load(path: Path, chain: tuple[Path, ...], paths: ProjectPaths) -> RiskPolicy:
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise InvalidInput(f"extends cycle: {cycle}", load_yaml(chain[-1]).location(("extends",)))
    return _build(load_yaml(path), chain, paths)


def _build(doc: SourceDoc, chain: tuple[Path, ...], paths: ProjectPaths) -> RiskPolicy:
    if not isinstance(doc.data, dict):
        raise doc.error((), "a risk policy must be a mapping with 'rules'")
    errors = check_schema(doc, policy_schema())
    if errors:
        raise InvalidInputs(errors)
    data = doc.data
    parent = _parent(doc, chain, paths) if "extends" in data else None
    if "disable" in data and parent is None:
        raise doc.error(("disable",), "'disable' needs 'extends' (there are no inherited rules to disable)")
    problems: list[InvalidInput] = []
    own = [_rule(doc, index, raw, problems) for index, raw in enumerate(data.get("rules", []))]
    _check_unique(doc, [rule for rule in own if rule is not None], problems)
    rules = _merge(doc, parent, [rule for rule in own if rule is not None], problems)
    if problems:
        raise InvalidInputs(problems)
    thresholds_raw = data.get("thresholds", {})
    approvals = _approvals(doc, parent.approvals if parent else ApprovalRules())
    base = parent.thresholds if parent else Thresholds()
    policy = RiskPolicy(
        name=doc.path.stem,
        path=doc.path,
        rules=tuple(rules),
        thresholds=Thresholds(
            before=RiskLevel.parse(thresholds_raw["before"]) if "before" in thresholds_raw else base.before,
            effects=RiskLevel.parse(thresholds_raw["effects"]) if "effects" in thresholds_raw else base.effects,
        ),
        default_level=RiskLevel.parse(data["default_level"]) if "default_level" in data
        else parent.default_level if parent else RiskLevel.YELLOW,
        mcp_default_level=RiskLevel.parse(data["mcp_default_level"]) if "mcp_default_level" in data
        else parent.mcp_default_level if parent else RiskLevel.YELLOW,
        extends=(parent.path, *parent.extends) if parent else (),
        approvals=approvals,
        required_gates=_required_gates(doc, parent.required_gates if parent else (), approvals),
    )
    _check_examples(doc, policy, own)
    return policy


def _approvals(doc: SourceDoc, base: ApprovalRules) -> ApprovalRules:
    """This policy's `approvals:`, each key overriding the extended policy's value."""
    raw = doc.data.get("approvals")
    if raw is None:
        return base
    signers = base.allowed_signers
    if "allowed_signers" in raw:
        signers = (doc.path.parent / raw["allowed_signers"]).resolve()
    groups = {**base.groups, **{name: tuple(members) for name, members in raw.get("groups", {}).items()}}
    return ApprovalRules(
        allowed_signers=signers,
        # Naming the people who may sign means signatures are wanted, unless the policy says otherwise.
        require_signature=raw.get("require_signature", base.require_signature or "allowed_signers" in raw),
        allow_self_approval=raw.get("allow_self_approval", base.allow_self_approval),
        groups=groups,
        timeout=parse_duration(raw["timeout"]) if "timeout" in raw else base.timeout,
        on_timeout=raw.get("on_timeout", base.on_timeout),
    )


def _required_gates(doc: SourceDoc, inherited: tuple[RequiredGate, ...],
                    approvals: ApprovalRules) -> tuple[RequiredGate, ...]:
    """Inherited gates stay: an extending policy may add gates, never drop one (a same id is an error)."""
    gates = list(inherited)
    for index, raw in enumerate(doc.data.get("required_gates", [])):
        if any(gate.id == raw["id"] for gate in gates):
            raise doc.error(("required_gates", index, "id"),
                            f"required gate {raw['id']!r} already exists (an inherited gate cannot be replaced)")
        for position, approver in enumerate(raw.get("approvers", [])):
            name = approver.removeprefix("group:")
            if approver.startswith("group:") and name not in approvals.groups:
                raise doc.error(("required_gates", index, "approvers", position),
                                f"unknown group {name!r} (define it under approvals.groups)")
        gates.append(RequiredGate(id=raw["id"], reason=raw["reason"], steps=tuple(raw.get("steps", ())),
                                  paths=tuple(raw.get("paths", ())), approvers=tuple(raw.get("approvers", ())),
                                  count=raw.get("count", 1)))
    return tuple(gates)


def _parent(doc: SourceDoc, chain: tuple[Path, ...], paths: ProjectPaths) -> RiskPolicy:
    try:
        path = resolve_named_file(doc.data["extends"], paths.risk_policies, doc.path.parent, "risk policy")
    except InvalidInput as error:
        raise doc.error(("extends",), error.message) from None
    return _load(path, (*chain, doc.path), paths)


def _merge(doc: SourceDoc, parent: RiskPolicy | None, own: list[Rule],
           problems: list[InvalidInput]) -> list[Rule]:
    """By id: a rule of this policy replaces the inherited one of the same id; `disable` drops inherited ones."""
    if parent is None:
        return own
    inherited = {rule.id: rule for rule in parent.rules}
    for index, rule_id in enumerate(doc.data.get("disable", [])):
        if rule_id not in inherited:
            problems.append(doc.error(("disable", index), f"{parent.name} has no rule {rule_id!r} to disable"))
        inherited.pop(rule_id, None)
    replaced = {rule.id for rule in own}
    return [rule for rule_id, rule in inherited.items() if rule_id not in replaced] + own


def _check_unique(doc: SourceDoc, rules: list[Rule], problems: list[InvalidInput]) -> None:
    seen: dict[str, str] = {}
    for index, rule in enumerate(rules):
        if rule.id in seen:
            problems.append(doc.error(("rules", index, "id"), f"duplicate rule id {rule.id!r} (also {seen[rule.id]})"))
        seen.setdefault(rule.id, rule.source)


def _rule(doc: SourceDoc, index: int, raw: dict[str, Any], problems: list[InvalidInput]) -> Rule | None:
    where: KeyPath = ("rules", index)
    kinds = [kind for kind in MATCH_KINDS if kind in raw]
    if len(kinds) != 1:
        found = ", ".join(kinds) or "none"
        problems.append(doc.error(where, "a rule matches exactly one of command, redirect, allow, environment, "
                                         f"effects, relaxation, mcp (found: {found})"))
        return None
    kind = kinds[0]
    try:
        matcher = _MATCHERS[kind](doc, (*where, kind), raw[kind])
    except InvalidInput as error:
        problems.append(error)
        return None
    location = doc.location(where)
    return Rule(
        id=raw["id"], level=RiskLevel.parse(raw["level"]), reason=raw["reason"], kind=kind,
        deny=raw.get("deny", False), source=f"{location.path}:{location.line}", **{kind: matcher},
    )


def _strings(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _command(doc: SourceDoc, where: KeyPath, raw: dict[str, Any]) -> CommandMatch:
    groups = []
    for index, group in enumerate(raw.get("flags", [])):
        bad = [flag for flag in group if not _FLAG.match(flag)]
        if bad:
            raise doc.error((*where, "flags", index),
                            f"{bad[0]!r} can never match: write one flag per spelling, -r or --recursive "
                            "(commands' -rf is split into -r and -f, so a rule wanting both uses two groups)")
        groups.append(frozenset(group))
    return CommandMatch(
        programs=_strings(raw["program"]), flag_groups=tuple(groups), subcommand=_strings(raw.get("subcommand", [])),
        args=tuple(raw.get("args", ())), args_regex=_regex(doc, where, raw, "args_regex"),
        dynamic_args=raw.get("dynamic_args", False), piped_from=tuple(raw.get("piped_from", ())),
        via=tuple(raw.get("via", ())), path=tuple(raw.get("path", ())), untrusted_path=raw.get("untrusted_path", False),
        code_options=tuple(raw.get("code_options", ())), inline=frozenset(raw.get("inline", ())),
        network=frozenset(raw.get("network", ())), profile_network=raw.get("profile_network"),
        hosts_allowed=raw.get("hosts_allowed"), runs_download=raw.get("runs_download", False),
    )


def _regex(doc: SourceDoc, where: KeyPath, raw: dict[str, Any], key: str) -> re.Pattern[str] | None:
    if key not in raw:
        return None
    try:
        return re.compile(raw[key])
    except re.error as error:
        raise doc.error((*where, key), f"regular expression does not compile: {error}") from None


def _redirect(doc: SourceDoc, where: KeyPath, raw: dict[str, Any]) -> RedirectMatch:
    return RedirectMatch(tuple(raw["targets"]), reads=raw.get("reads", False))


def _environment(doc: SourceDoc, where: KeyPath, raw: dict[str, Any]) -> EnvironmentMatch:
    return EnvironmentMatch(_strings(raw["names"]), _regex(doc, where, raw, "value_regex"))


def _allow(doc: SourceDoc, where: KeyPath, raw: list[str]) -> tuple[str, ...]:
    return tuple(raw)


def _effects(doc: SourceDoc, where: KeyPath, raw: dict[str, Any]) -> EffectsMatch:
    kinds = frozenset(raw.get("kinds", ("created", "modified", "deleted")))
    if (raw.get("executable") or raw.get("symlink_outside") or raw.get("setuid")) and kinds == {"deleted"}:
        raise doc.error(where, "can never match: a deleted file is neither executable nor a symlink")
    content = None
    if "content" in raw:
        inner = raw["content"]
        content = ContentMatch(
            added_regex=_regex(doc, (*where, "content"), inner, "added_regex"),
            count_drops=_regex(doc, (*where, "content"), inner, "count_drops"),
            changed_keys=tuple(inner.get("changed_keys", ())), secrets=inner.get("secrets", False))
    return EffectsMatch(
        paths=tuple(raw.get("paths", ())), kinds=kinds, executable=raw.get("executable", False),
        setuid=raw.get("setuid", False), content=content,
        symlink_outside=raw.get("symlink_outside", False), count_over=raw.get("count_over"),
        bytes_over=raw.get("bytes_over"),
    )


def _relaxation(doc: SourceDoc, where: KeyPath, raw: dict[str, Any]) -> RelaxationMatch:
    return RelaxationMatch(frozenset(raw["kinds"]), tuple(raw.get("details", ())))


def _mcp(doc: SourceDoc, where: KeyPath, raw: dict[str, Any]) -> McpMatch:
    conditions = []
    for index, condition in enumerate(raw.get("arguments", [])):
        at: KeyPath = (*where, "arguments", index)
        try:
            pointer = parse_pointer(condition.get("path", ""))
        except ValueError as error:
            raise doc.error((*at, "path"), f"{condition['path']!r} is not a JSON pointer: {error}") from None
        conditions.append(ArgumentCondition(pointer, condition.get("glob"), _regex(doc, at, condition, "regex")))
    return McpMatch(tools=_strings(raw["tool"]), servers=_strings(raw.get("server", [])),
                    arguments=tuple(conditions))


_MATCHERS: dict[str, Callable[[SourceDoc, KeyPath, Any], Any]] = {
    "command": _command, "redirect": _redirect, "allow": _allow, "environment": _environment, "effects": _effects,
    "relaxation": _relaxation, "mcp": _mcp,
}


# --- a rule's own examples -------------------------------------------------------------------------------


def _check_examples(doc: SourceDoc, policy: RiskPolicy, own: list[Rule | None]) -> None:
    """Every rule matches its `match` examples and none of its `no_match` ones. A policy whose rules passed
    once, in this exact content and with this lg, is not checked again (lg.config.verdicts)."""
    from lg.policy.grade import rule_matches_example  # noqa: PLC0415 - grade imports this module's users

    subject = json.dumps(doc.data, sort_keys=True, default=str).encode()
    if verdicts.passed("policy-examples", subject, verdicts.lg_source_digest()):
        return
    problems: list[InvalidInput] = []
    context = MatchContext(known=policy.known_programs)
    for index, raw in enumerate(doc.data.get("rules", [])):
        rule = own[index]
        if rule is None:
            continue
        for expected in ("match", "no_match"):
            for position, example in enumerate(raw.get("examples", {}).get(expected, [])):
                where: KeyPath = ("rules", index, "examples", expected, position)
                try:
                    graded, scope = _example(doc, where, rule, example)
                    matched = rule_matches_example(rule, graded, MatchContext(scope, context.known))
                except InvalidInput as error:
                    problems.append(error)
                    continue
                if matched != (expected == "match"):
                    verb = "does not match" if expected == "match" else "matches"
                    problems.append(doc.error(where, f"rule {rule.id} {verb} its own example {example!r}"))
    if problems:
        raise InvalidInputs(problems)
    verdicts.remember("policy-examples", subject, verdicts.lg_source_digest())


def _example(doc: SourceDoc, where: KeyPath, rule: Rule, example: Any) -> tuple[Any, NetworkScope]:
    """(what the example grades, the network it is graded under: unknown unless it says)."""
    if rule.kind in ("command", "redirect", "allow", "environment"):
        if isinstance(example, dict) and isinstance(example.get("command"), str):
            return example["command"], scope_from(doc, (*where, "network"), example.get("network"))
        if not isinstance(example, str):
            raise doc.error(where, "a command example is a command line (a string), or {command, network}")
        return example, UNKNOWN
    if rule.kind == "mcp":
        return mcp_call_from(doc, where, example), UNKNOWN
    if rule.kind == "relaxation":
        if not isinstance(example, dict) or "kind" not in example:
            raise doc.error(where, "a relaxation example is a mapping with 'kind' (and 'detail')")
        return Relaxation(str(example["kind"]), str(example.get("detail", ""))), UNKNOWN
    changes = example if isinstance(example, list) else [example]
    try:
        return changes_with_content(changes), UNKNOWN
    except (TypeError, AttributeError) as error:
        raise doc.error(where, f"an effects example is a change (path, kind, size, mode...): {error}") from None


def changes_with_content(raw: list[dict[str, Any]]) -> tuple[list[FileChange], InlineContent]:
    """Changes as written in examples, golden files and --effects files: `content`/`old_content` give the text."""
    changes, new_text, old_text = [], {}, {}
    for item in raw:
        change, new, old = split_content(item)
        changes.append(FileChange(**change))
        if new is not None:
            new_text[change["path"]] = new
        if old is not None:
            old_text[change["path"]] = old
    return changes, InlineContent(new_text, old_text)


def mcp_call_from(doc: SourceDoc, where: KeyPath, raw: Any) -> McpCall:
    """An MCP call as examples and golden files write it: {server, tool, arguments, annotations}."""
    if not (isinstance(raw, dict) and isinstance(raw.get("server"), str) and isinstance(raw.get("tool"), str)):
        raise doc.error(where, "an MCP call is a mapping with 'server' and 'tool' (and 'arguments', "
                               "'annotations')")
    unknown = sorted(set(raw) - {"server", "tool", "arguments", "annotations"})
    if unknown:
        raise doc.error((*where, unknown[0]), "an MCP call has server, tool, arguments and annotations only")
    annotations = raw.get("annotations", {})
    if not isinstance(annotations, dict):
        raise doc.error((*where, "annotations"), "annotations are a mapping (destructiveHint: true, ...)")
    return McpCall(raw["server"], raw["tool"], raw.get("arguments", {}), annotations)


def scope_from(doc: SourceDoc, where: KeyPath, raw: Any) -> NetworkScope:
    """`network: none`, or a list of allow-list entries as VM profiles' relaxations spell them (pypi.org:443)."""
    if raw is None:
        return UNKNOWN
    if raw == "none":
        return NONE
    if isinstance(raw, list) and all(isinstance(entry, str) for entry in raw):
        return NetworkScope.of(raw)
    raise doc.error(where, "network is 'none' or a list of hosts the profile allows (host:port)")
