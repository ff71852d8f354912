"""Grade a call to an MCP tool before lg makes it: the policy's `mcp` rules, a default, and the tool's hints.

Fail closed, in this order:
- arguments that are not a JSON object, hold what JSON cannot, nest absurdly deep or exceed 1 MB: red;
- the `mcp` rules that match set the grade (the highest wins, as for commands; a rule may say green);
- no rule matching: the policy's `mcp_default_level`, never below yellow;
- the server's annotations are hints from the server, so they may raise the grade and never lower it:
  `destructiveHint: true`, or a destructiveHint that is not a boolean, makes the call at least orange.
  (`readOnlyHint` never lowers anything: a server that lies about it gains nothing.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lg.policy.levels import RiskLevel
from lg.policy.mcp_match import argument_problem
from lg.policy.model import Assessment, RiskPolicy, RuleMatch

MIN_DEFAULT_LEVEL = RiskLevel.YELLOW
DESTRUCTIVE_HINT_LEVEL = RiskLevel.ORANGE


def grade_mcp_call(policy: RiskPolicy, server: str, tool: str, arguments: Mapping[str, Any],
                   annotations: Mapping[str, Any] | None = None) -> Assessment:
    """The grade of calling `tool` on `server` with `arguments`, with every rule that fired (for the card).
    `annotations` are the tool's as its server listed them (McpTool.annotations), if known."""
    label = f"mcp {server}/{tool}"
    problem = argument_problem(arguments)
    if problem is not None:
        matches = [RuleMatch("policy.mcp_arguments", RiskLevel.RED, f"cannot be graded: {problem}",
                             f"{server}/{tool}", "mcp", label)]
    else:
        matches = _rule_matches(policy, server, tool, arguments, label)
    matches.extend(_hint_matches(server, tool, annotations, label))
    return _assess(policy, matches)


def _rule_matches(policy: RiskPolicy, server: str, tool: str, arguments: Mapping[str, Any],
                  label: str) -> list[RuleMatch]:
    matches = []
    for rule in policy.rules_of("mcp"):
        assert rule.mcp is not None  # noqa: S101 - guaranteed by the loader for this kind
        found = rule.mcp.matches(server, tool, arguments)
        if found is not None:
            matches.append(RuleMatch(rule.id, rule.level, rule.reason, found, "mcp", label))
    if matches:
        return matches
    level = max(policy.mcp_default_level, MIN_DEFAULT_LEVEL)
    return [RuleMatch("policy.mcp_default_level", level, f"no rule covers the MCP tool {tool!r} of {server!r}",
                      f"{server}/{tool}", "default", label)]


def _hint_matches(server: str, tool: str, annotations: Mapping[str, Any] | None, label: str) -> list[RuleMatch]:
    if annotations is None:
        return []
    if not isinstance(annotations, Mapping):
        return [RuleMatch("policy.mcp_destructive_hint", DESTRUCTIVE_HINT_LEVEL,
                          "the server's annotations for the tool are not a mapping: taken as destructive",
                          f"{server}/{tool}", "mcp", label)]
    hint = annotations.get("destructiveHint")
    if hint is None or hint is False:
        return []
    shown = json.dumps(hint, default=repr)
    reason = ("the server says the tool may destroy data (destructiveHint)" if hint is True
              else f"the server's destructiveHint is {shown}, not a boolean: taken as destructive")
    return [RuleMatch("policy.mcp_destructive_hint", DESTRUCTIVE_HINT_LEVEL, reason,
                      f"{server}/{tool} destructiveHint={shown}", "mcp", label)]


def _assess(policy: RiskPolicy, matches: list[RuleMatch]) -> Assessment:
    """As lg.policy.grade assesses commands: the highest level wins; a tool call is graded before it runs."""
    level = max((match.level for match in matches), default=RiskLevel.GREEN)
    return Assessment(
        level=level,
        matches=tuple(sorted(matches, key=lambda match: -match.level)),
        gate=level >= policy.thresholds.before,
        denied=any(match.rule_id in policy.denied_ids for match in matches),
        unanalysable=any(match.rule_id == "policy.mcp_arguments" for match in matches),
    )
