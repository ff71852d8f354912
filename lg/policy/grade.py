"""Grade commands, effects and profile relaxations against a policy; the highest matching level wins.

Per command: the risk rules (command, redirect) that match it; if none, an allow rule makes it green; if none
either, the policy's `default_level` applies ("no rule covers this program"). Whatever could not be analysed
is graded at least orange. A matched `deny` rule refuses the step outright.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from lg.model import FileChange, Step
from lg.policy.content import ContentReader, content_changes
from lg.policy.levels import RiskLevel
from lg.policy.mcp_match import argument_problem
from lg.policy.model import (
    Assessment,
    MatchContext,
    Relaxation,
    RiskPolicy,
    Rule,
    RuleMatch,
    invocation_facts,
    trusted_path,
)
from lg.policy.network import UNKNOWN, NetworkScope
from lg.policy.programs import PACKAGE_RUNNERS, RUNNERS, SHELLS, WRAPPERS
from lg.policy.shell import Analysis, Invocation, analyse

UNANALYSABLE_LEVEL = RiskLevel.ORANGE


def grade_command(policy: RiskPolicy, script: str, scope: NetworkScope = UNKNOWN) -> Assessment:
    """The grade of a command line alone. Without a VM profile its network is unknown: graded as some network."""
    return _assess(policy, _command_matches(policy, script, scope), policy.thresholds.before)


def grade_effects(policy: RiskPolicy, changes: Sequence[FileChange],
                  content: ContentReader | None = None) -> Assessment:
    """The grade of a step's changes; `content` (the held files and the workspace's) lets rules read what changed.
    Without it, rules on content cannot match (their path alone is graded by the path rules)."""
    matches = []
    for rule in policy.rules_of("effects"):
        assert rule.effects is not None  # noqa: S101 - guaranteed by the loader for this kind
        hit = rule.effects.matches(changes)
        if not hit:
            continue
        if rule.effects.content is not None:
            found = (content_changes(hit, rule.effects.content, content, fail_closed=bool(rule.effects.paths))
                     if content is not None else [])
            if found:
                matches.append(_match(rule, _listed([detail for _change, detail in found]), "effects"))
            continue
        matches.append(_match(rule, _listed([change.path for change in hit]), "effects"))
    return _assess(policy, matches, policy.thresholds.effects)


def _listed(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")


def grade_relaxations(policy: RiskPolicy, relaxations: Sequence[Relaxation]) -> Assessment:
    return _assess(policy, _relaxation_matches(policy, relaxations), policy.thresholds.before)


def grade_step(policy: RiskPolicy, step: Step, relaxations: Sequence[Relaxation] = ()) -> Assessment:
    """The pre-run grade of a step: its script and the ways it weakens the default VM profile."""
    return grade_script(policy, step.run or "", relaxations)


def grade_script(policy: RiskPolicy, script: str, relaxations: Sequence[Relaxation] = ()) -> Assessment:
    """The grade of a step's script under its VM profile's relaxations (whose network entries are all the network
    the step has: none at all when there are none)."""
    matches = _command_matches(policy, script, scope_of(relaxations)) + _relaxation_matches(policy, relaxations)
    return _assess(policy, matches, policy.thresholds.before)


def scope_of(relaxations: Iterable[Relaxation]) -> NetworkScope:
    return NetworkScope.of(r.detail for r in relaxations if r.kind == "network")


def rule_matches_example(rule: Rule, example: Any, context: MatchContext | None = None) -> bool:
    """Does `rule`, on its own, match an example (a command line, a change list, a relaxation, an MCP call)?"""
    if rule.kind in ("command", "redirect", "allow"):
        scope = context.scope if context else UNKNOWN
        return any(_rule_hits(rule, invocation, context or MatchContext(scope))
                   for invocation in analyse(example).invocations)
    if rule.kind == "environment":
        assert rule.environment is not None  # noqa: S101
        return any(rule.environment.matches(assignment) for assignment in analyse(example).assignments)
    if rule.kind == "mcp":
        assert rule.mcp is not None  # noqa: S101
        return argument_problem(example.arguments) is None and rule.mcp.matches(
            example.server, example.tool, example.arguments) is not None
    if rule.kind == "effects":
        assert rule.effects is not None  # noqa: S101
        changes, content = example if isinstance(example, tuple) else (example, None)
        hit = rule.effects.matches(changes)
        if rule.effects.content is not None:
            return bool(hit and content is not None and content_changes(hit, rule.effects.content, content))
        return bool(hit)
    assert rule.relaxation is not None  # noqa: S101
    return rule.relaxation.matches(example)


# --- internals -------------------------------------------------------------------------------------------


def _command_matches(policy: RiskPolicy, script: str, scope: NetworkScope) -> list[RuleMatch]:
    analysis = analyse(script)
    context = MatchContext(scope, policy.known_programs)
    matches = _problems(analysis) + _environment_matches(policy, analysis)
    for invocation in analysis.invocations:
        if invocation.program is not None:  # else already reported as unanalysable
            matches.extend(_invocation_matches(policy, invocation, context))
    return _dedupe(matches)


def _problems(analysis: Analysis, label: str | None = None) -> list[RuleMatch]:
    return [RuleMatch("policy.unanalysable", UNANALYSABLE_LEVEL, f"cannot be analysed: {reason}", _flat(span),
                      "analysis", label) for reason, span in analysis.problems]


def _environment_matches(policy: RiskPolicy, analysis: Analysis) -> list[RuleMatch]:
    matches = []
    for assignment in analysis.assignments:
        for rule in policy.rules_of("environment"):
            if rule.environment is not None and rule.environment.matches(assignment):
                where = f" (via {', '.join(assignment.via)})" if assignment.via else ""
                matches.append(RuleMatch(rule.id, rule.level, rule.reason, f"{assignment.name}={assignment.value}",
                                         "environment", f"{assignment.name}{where}"))
    return matches


def _invocation_matches(policy: RiskPolicy, invocation: Invocation, context: MatchContext) -> list[RuleMatch]:
    program = invocation.program or ""
    hits = [_match(rule, _span(rule, invocation), rule.kind, invocation.label)
            for rule in policy.command_rules_for(program, invocation_facts(invocation))
            if _rule_hits(rule, invocation, context)]
    if hits or invocation.risk_only:
        return hits
    if trusted_path(invocation.path):
        allowed = next((rule for rule in policy.rules_of("allow") if program in rule.allow), None)
        if allowed is not None:
            return [_match(allowed, _flat(invocation.span), "command", invocation.label)]
    default = RuleMatch("policy.default_level", policy.default_level, f"no rule covers the program {program!r}",
                        _flat(invocation.span), "default", invocation.label)
    return [default, *_speculative(policy, invocation, context)]


def _speculative(policy: RiskPolicy, invocation: Invocation, context: MatchContext) -> list[RuleMatch]:
    """A program no rule covers may be a wrapper lg does not know (`strace rm -rf /`): if one of its arguments is a
    program the policy knows, grade the rest as the command it would run, and report what a risk rule finds."""
    if invocation.program in WRAPPERS or invocation.program in RUNNERS or invocation.program in PACKAGE_RUNNERS:
        return []  # lg.policy.programs already followed it
    positionals = invocation.positionals
    start = next((i for i, word in enumerate(positionals)
                  if word.rsplit("/", 1)[-1] in context.known or word.rsplit("/", 1)[-1] in SHELLS), None)
    if start is None:
        return []
    index = invocation.words.index(positionals[start])
    inner = analyse(shlex.join(invocation.words[index:]))
    label = f"{invocation.program} (if it runs its arguments)"
    found = _problems(inner, label)
    for candidate in inner.invocations:
        if candidate.program is None:
            continue
        moved = replace(candidate, via=(*invocation.via, label, *candidate.via), span=invocation.span)
        found.extend(_match(rule, _span(rule, moved), rule.kind, moved.label)
                     for rule in policy.command_rules_for(candidate.program, invocation_facts(moved))
                     if _rule_hits(rule, moved, context))
    return found


def _relaxation_matches(policy: RiskPolicy, relaxations: Iterable[Relaxation]) -> list[RuleMatch]:
    matches: list[RuleMatch] = []
    rules = policy.rules_of("relaxation")
    for relaxation in relaxations:
        hits = [rule for rule in rules if rule.relaxation and rule.relaxation.matches(relaxation)]
        label = f"{relaxation.kind}: {relaxation.detail}" if relaxation.detail else relaxation.kind
        if hits:
            matches.extend(_match(rule, label, "relaxation") for rule in hits)
        else:  # fail closed: a relaxation nobody wrote a rule for is not harmless by default
            matches.append(RuleMatch("policy.unknown_relaxation", RiskLevel.ORANGE,
                                     "the profile relaxes a control no rule grades", label, "relaxation"))
    return matches


def _rule_hits(rule: Rule, invocation: Invocation, context: MatchContext) -> bool:
    if rule.kind == "command" and rule.command is not None:
        return rule.command.matches(invocation, context)
    if rule.kind == "redirect" and rule.redirect is not None:
        return rule.redirect.matches(invocation) is not None
    if rule.kind == "allow":
        return invocation.program is not None and invocation.program in rule.allow
    return False


def _span(rule: Rule, invocation: Invocation) -> str:
    if rule.kind == "redirect" and rule.redirect is not None:
        return rule.redirect.matches(invocation) or _flat(invocation.span)
    return _flat(invocation.span)


def _match(rule: Rule, span: str | None, part: str, program: str | None = None) -> RuleMatch:
    return RuleMatch(rule.id, rule.level, rule.reason, span, part, program)


def _flat(text: str) -> str:
    """The span on one line, whole: a reviewer must see all of it (cards wrap long lines, never cut them)."""
    return " ".join(text.split())


def _dedupe(matches: list[RuleMatch]) -> list[RuleMatch]:
    return list(dict.fromkeys(matches))


def _assess(policy: RiskPolicy, matches: list[RuleMatch], threshold: RiskLevel) -> Assessment:
    level = max((match.level for match in matches), default=RiskLevel.GREEN)
    denied_ids = policy.denied_ids
    ordered = sorted(matches, key=lambda match: -match.level)
    return Assessment(
        level=level,
        matches=tuple(ordered),
        gate=level >= threshold,
        denied=any(match.rule_id in denied_ids for match in matches),
        unanalysable=any(match.part == "analysis" for match in matches),
    )
