"""Golden files: real command lines and change sets with the level a policy must give them (`level`), or at least
(`at_least`, for red-team cases), under the network a VM profile would give (`network`, unknown when absent).

    policy: default
    network: [pypi.org:443]
    commands:
      - {command: "rm -rf /", level: red, note: "classic"}
      - {command: "toybox rm -rf /home", at_least: orange}
    effects:
      - {changes: [{path: .github/workflows/ci.yml, kind: modified}], level: orange}
      - {changes: [{path: requirements.txt, kind: modified, content: "x @ https://x.example/x.whl"}], at_least: red}
    mcp:
      - {call: {server: github, tool: delete_repo, arguments: {name: x}}, level: orange}
      - {call: {server: docs, tool: search, annotations: {destructiveHint: true}}, at_least: orange}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.config.schema_check import check_schema
from lg.config.yamlsource import load_yaml
from lg.errors import InvalidInput, InvalidInputs, Location
from lg.model import ProjectConfig
from lg.policy.grade import grade_command, grade_effects
from lg.policy.levels import LEVEL_NAMES, RiskLevel
from lg.policy.load import changes_with_content, load_policy, mcp_call_from, scope_from
from lg.policy.mcp_grade import grade_mcp_call
from lg.policy.mcp_match import McpCall


def golden_schema() -> dict[str, Any]:
    level = {"enum": list(LEVEL_NAMES)}
    network = {"oneOf": [{"const": "none"}, {"type": "array", "items": {"type": "string", "minLength": 1}}],
               "description": "the network the step's profile gives: none, or allow-list entries (host:port); "
                              "unknown when absent"}
    expectation = {"level": level, "at_least": {**level, "description": "the minimum grade (red-team cases)"},
                   "note": {"type": "string"},
                   "known_gap": {"type": "string", "description": "why the grader misses this one"}}
    one_level = [{"required": ["level"]}, {"required": ["at_least"]}]
    return {
        "type": "object", "additionalProperties": False, "required": ["policy"],
        "properties": {
            "policy": {"type": "string"},
            "network": network,
            "commands": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["command"], "oneOf": one_level,
                "properties": {"command": {"type": "string"}, "network": network, **expectation}}},
            "effects": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["changes"], "oneOf": one_level,
                "properties": {"changes": {"type": "array", "items": {"type": "object"}}, **expectation}}},
            "mcp": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["call"], "oneOf": one_level,
                "properties": {"call": {"type": "object", "description": "{server, tool, arguments, annotations}"},
                               **expectation}}},
        },
    }


@dataclass(frozen=True)
class GoldenCase:
    location: Location
    subject: str
    expected: RiskLevel
    actual: RiskLevel
    known_gap: str = ""  # a documented miss: counted in precision and recall, but not a test failure
    at_least: bool = False  # `expected` is a minimum (red-team cases), not the exact grade

    @property
    def ok(self) -> bool:
        agrees = self.actual >= self.expected if self.at_least else self.expected == self.actual
        return agrees or bool(self.known_gap)


def run_golden(path: Path, config: ProjectConfig) -> list[GoldenCase]:
    doc = load_yaml(path)
    errors = check_schema(doc, golden_schema()) if isinstance(doc.data, dict) else [
        doc.error((), "a golden file is a mapping with 'policy' and 'commands' or 'effects'")]
    if errors:
        raise InvalidInputs(errors)
    policy = load_policy(doc.data["policy"], config, path.parent)
    cases = []
    for index, case in enumerate(doc.data.get("commands", [])):
        raw_network = case.get("network", doc.data.get("network"))
        scope = scope_from(doc, ("commands", index, "network"), raw_network)
        actual = grade_command(policy, case["command"], scope).level
        cases.append(_case(doc.location(("commands", index)), case["command"], case, actual))
    for index, case in enumerate(doc.data.get("effects", [])):
        try:
            changes, content = changes_with_content(case["changes"])
        except (TypeError, AttributeError, KeyError) as error:
            raise doc.error(("effects", index, "changes"), f"not a change: {error}") from None
        actual = grade_effects(policy, changes, content).level
        subject = ", ".join(f"{c.kind} {c.path}" for c in changes)
        cases.append(_case(doc.location(("effects", index)), subject, case, actual))
    for index, case in enumerate(doc.data.get("mcp", [])):
        call = mcp_call_from(doc, ("mcp", index, "call"), case["call"])
        actual = grade_mcp_call(policy, call.server, call.tool, call.arguments, call.annotations).level
        cases.append(_case(doc.location(("mcp", index)), call_subject(call), case, actual))
    return cases


def call_subject(call: McpCall) -> str:
    """An MCP call on one line, its arguments cut short (golden reports list many)."""
    arguments = json.dumps(call.arguments, ensure_ascii=False, default=repr)
    return f"{call.server}/{call.tool} {arguments if len(arguments) <= 120 else arguments[:120] + '...'}"


def _case(location: Location, subject: str, case: dict[str, Any], actual: RiskLevel) -> GoldenCase:
    at_least = "at_least" in case
    expected = RiskLevel.parse(case["at_least"] if at_least else case["level"])
    return GoldenCase(location, subject, expected, actual, case.get("known_gap", ""), at_least)


def precision_recall(cases: list[GoldenCase], at_least: RiskLevel) -> tuple[float, float]:
    """Of the cases graded >= `at_least`, how many should be (precision); of those that should, how many are.
    A red-team case only says its minimum: above that minimum it is left out of precision (not known)."""
    predicted = [c for c in cases if c.actual >= at_least and not (c.at_least and c.expected < at_least)]
    relevant = [c for c in cases if c.expected >= at_least]
    hits = [c for c in predicted if c.expected >= at_least]
    precision = len(hits) / len(predicted) if predicted else 1.0
    recall = len(hits) / len(relevant) if relevant else 1.0
    return precision, recall


__all__ = ["GoldenCase", "InvalidInput", "precision_recall", "run_golden"]
