"""Grade commands, effects and profile relaxations against a policy; the highest matching level wins.

Per command: the risk rules (command, redirect) that match it; if none, an allow rule makes it green; if none
either, the policy's `default_level` applies ("no rule covers this program"). Whatever could not be analysed
is graded at least orange. A matched `deny` rule refuses the step outright.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from lg.model import FileChange, Step
from lg.policy.levels import RiskLevel
from lg.policy.model import Assessment, Relaxation, RiskPolicy, Rule, RuleMatch
from lg.policy.shell import Invocation, analyse

UNANALYSABLE_LEVEL = RiskLevel.ORANGE
SPAN_LIMIT = 120


def grade_command(policy: RiskPolicy, script: str) -> Assessment:
    return _assess(policy, _command_matches(policy, script), policy.thresholds.before)


def grade_effects(policy: RiskPolicy, changes: Sequence[FileChange]) -> Assessment:
    matches = []
    for rule in policy.rules_of("effects"):
        assert rule.effects is not None  # noqa: S101 - guaranteed by the loader for this kind
        hit = rule.effects.matches(changes)
        if hit:
            paths = ", ".join(change.path for change in hit[:5]) + (f" (+{len(hit) - 5} more)" if len(hit) > 5 else "")
            matches.append(_match(rule, paths, "effects"))
    return _assess(policy, matches, policy.thresholds.effects)


def grade_relaxations(policy: RiskPolicy, relaxations: Sequence[Relaxation]) -> Assessment:
    return _assess(policy, _relaxation_matches(policy, relaxations), policy.thresholds.before)


def grade_step(policy: RiskPolicy, step: Step, relaxations: Sequence[Relaxation] = ()) -> Assessment:
    """The pre-run grade of a step: its script and the ways it weakens the default VM profile."""
    return grade_script(policy, step.run or "", relaxations)


def grade_script(policy: RiskPolicy, script: str, relaxations: Sequence[Relaxation] = ()) -> Assessment:
    matches = _command_matches(policy, script) + _relaxation_matches(policy, relaxations)
    return _assess(policy, matches, policy.thresholds.before)


def rule_matches_example(rule: Rule, example: Any) -> bool:
    """Does `rule`, on its own, match an example (a command line, a change list, a relaxation)?"""
    if rule.kind in ("command", "redirect", "allow"):
        return any(_rule_hits(rule, invocation) for invocation in analyse(example).invocations)
    if rule.kind == "effects":
        assert rule.effects is not None  # noqa: S101
        return bool(rule.effects.matches(example))
    assert rule.relaxation is not None  # noqa: S101
    return rule.relaxation.matches(example)


# --- internals -------------------------------------------------------------------------------------------


def _command_matches(policy: RiskPolicy, script: str) -> list[RuleMatch]:
    analysis = analyse(script)
    matches = [
        RuleMatch("policy.unanalysable", UNANALYSABLE_LEVEL, f"cannot be analysed: {reason}", _short(span), "analysis")
        for reason, span in analysis.problems
    ]
    risk_rules = policy.rules_of("command", "redirect")
    allow_rules = policy.rules_of("allow")
    for invocation in analysis.invocations:
        if invocation.program is None:
            continue  # already reported as unanalysable
        hits = [_match(rule, _span(rule, invocation), rule.kind) for rule in risk_rules if _rule_hits(rule, invocation)]
        if not hits:
            allowed = next((rule for rule in allow_rules if _rule_hits(rule, invocation)), None)
            hits = [_match(allowed, _short(invocation.span), "command")] if allowed else [RuleMatch(
                "policy.default_level", policy.default_level,
                f"no rule covers the program {invocation.program!r}", _short(invocation.span), "default")]
        matches.extend(hits)
    return _dedupe(matches)


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


def _rule_hits(rule: Rule, invocation: Invocation) -> bool:
    if rule.kind == "command" and rule.command is not None:
        return rule.command.matches(invocation)
    if rule.kind == "redirect" and rule.redirect is not None:
        return rule.redirect.matches(invocation) is not None
    if rule.kind == "allow":
        return invocation.program is not None and invocation.program in rule.allow
    return False


def _span(rule: Rule, invocation: Invocation) -> str:
    if rule.kind == "redirect" and rule.redirect is not None:
        return rule.redirect.matches(invocation) or _short(invocation.span)
    return _short(invocation.span)


def _match(rule: Rule, span: str | None, part: str) -> RuleMatch:
    return RuleMatch(rule.id, rule.level, rule.reason, span, part)


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SPAN_LIMIT else flat[: SPAN_LIMIT - 3] + "..."


def _dedupe(matches: list[RuleMatch]) -> list[RuleMatch]:
    return list(dict.fromkeys(matches))


def _assess(policy: RiskPolicy, matches: list[RuleMatch], threshold: RiskLevel) -> Assessment:
    level = max((match.level for match in matches), default=RiskLevel.GREEN)
    denied_ids = {rule.id for rule in policy.rules if rule.deny}
    ordered = sorted(matches, key=lambda match: -match.level)
    return Assessment(
        level=level,
        matches=tuple(ordered),
        gate=level >= threshold,
        denied=any(match.rule_id in denied_ids for match in matches),
        unanalysable=any(match.part == "analysis" for match in matches),
    )
