"""Golden files: real command lines and change sets with the level a policy must give them.

    policy: default
    commands:
      - {command: "rm -rf /", level: red, note: "classic"}
    effects:
      - {changes: [{path: .github/workflows/ci.yml, kind: modified}], level: orange}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.config.schema_check import check_schema
from lg.config.yamlsource import load_yaml
from lg.errors import InvalidInput, InvalidInputs, Location
from lg.model import FileChange, ProjectConfig
from lg.policy.grade import grade_command, grade_effects
from lg.policy.levels import LEVEL_NAMES, RiskLevel
from lg.policy.load import load_policy


def golden_schema() -> dict[str, Any]:
    level = {"enum": list(LEVEL_NAMES)}
    return {
        "type": "object", "additionalProperties": False, "required": ["policy"],
        "properties": {
            "policy": {"type": "string"},
            "commands": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["command", "level"],
                "properties": {"command": {"type": "string"}, "level": level, "note": {"type": "string"},
                               "known_gap": {"type": "string", "description": "why the grader misses this one"}}}},
            "effects": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["changes", "level"],
                "properties": {"changes": {"type": "array", "items": {"type": "object"}}, "level": level,
                               "note": {"type": "string"}}}},
        },
    }


@dataclass(frozen=True)
class GoldenCase:
    location: Location
    subject: str
    expected: RiskLevel
    actual: RiskLevel
    known_gap: str = ""  # a documented miss: counted in precision and recall, but not a test failure

    @property
    def ok(self) -> bool:
        return self.expected == self.actual or bool(self.known_gap)


def run_golden(path: Path, config: ProjectConfig) -> list[GoldenCase]:
    doc = load_yaml(path)
    errors = check_schema(doc, golden_schema()) if isinstance(doc.data, dict) else [
        doc.error((), "a golden file is a mapping with 'policy' and 'commands' or 'effects'")]
    if errors:
        raise InvalidInputs(errors)
    policy = load_policy(doc.data["policy"], config, path.parent)
    cases = []
    for index, case in enumerate(doc.data.get("commands", [])):
        actual = grade_command(policy, case["command"]).level
        cases.append(GoldenCase(doc.location(("commands", index)), case["command"], RiskLevel.parse(case["level"]),
                                actual, case.get("known_gap", "")))
    for index, case in enumerate(doc.data.get("effects", [])):
        try:
            changes = [FileChange(**change) for change in case["changes"]]
        except TypeError as error:
            raise doc.error(("effects", index, "changes"), f"not a change: {error}") from None
        actual = grade_effects(policy, changes).level
        subject = ", ".join(f"{c.kind} {c.path}" for c in changes)
        cases.append(GoldenCase(doc.location(("effects", index)), subject, RiskLevel.parse(case["level"]), actual))
    return cases


def precision_recall(cases: list[GoldenCase], at_least: RiskLevel) -> tuple[float, float]:
    """Of the cases graded >= `at_least`, how many should be (precision); of those that should, how many are."""
    predicted = [c for c in cases if c.actual >= at_least]
    relevant = [c for c in cases if c.expected >= at_least]
    hits = [c for c in predicted if c.expected >= at_least]
    precision = len(hits) / len(predicted) if predicted else 1.0
    recall = len(hits) / len(relevant) if relevant else 1.0
    return precision, recall


__all__ = ["GoldenCase", "InvalidInput", "precision_recall", "run_golden"]
