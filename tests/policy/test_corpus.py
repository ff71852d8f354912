"""The golden corpus: 200+ real command lines and change sets with the level a reviewer would give them."""

from __future__ import annotations

from lg.config.project import load_project_config
from lg.policy.golden import precision_recall, run_golden
from lg.policy.levels import RiskLevel
from tests.conftest import REPO

CORPUS = REPO / "tests/policy/corpus"


def test_corpus_agrees_and_reports_precision_and_recall(capsys) -> None:  # type: ignore[no-untyped-def]
    config = load_project_config(REPO)
    cases = [case for path in sorted(CORPUS.glob("*.yaml")) for case in run_golden(path, config)]
    assert len([c for c in cases if "effects" not in str(c.location.key_path)]) >= 150
    wrong = [f"{c.location}: expected {c.expected.label}, got {c.actual.label}: {c.subject}" for c in cases if not c.ok]
    assert wrong == []
    with capsys.disabled():
        for level in (RiskLevel.RED, RiskLevel.ORANGE):
            precision, recall = precision_recall(cases, level)
            print(f"\n{level.label}+: precision {precision:.3f}, recall {recall:.3f} over {len(cases)} cases")
            assert precision >= 0.95 and recall >= 0.95


def test_lg_policy_test_runs_the_corpus(lg) -> None:  # type: ignore[no-untyped-def]
    result = lg("policy", "test", "--golden", CORPUS)
    assert result.code == 0 and "golden: 217 of 217 cases agree" in result.out
