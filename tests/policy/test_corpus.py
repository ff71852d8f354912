"""The golden corpora: real command lines and change sets with the level a reviewer would give them, the red-team
corpus with minimum grades, and the benign CI corpus's gate rate."""

from __future__ import annotations

import yaml

from lg.config.project import load_project_config
from lg.policy.golden import precision_recall, run_golden
from lg.policy.grade import grade_script
from lg.policy.levels import RiskLevel
from lg.policy.load import load_policy_file
from lg.policy.model import Relaxation
from lg.security.profile import load_vm_profile
from tests.conftest import REPO

CORPUS = REPO / "tests/policy/corpus"
BENIGN = REPO / "tests/policy/benign/ci_steps.yaml"


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
    assert result.code == 0 and "golden: 574 of 574 cases agree" in result.out


def test_the_red_team_corpus_covers_the_issue_and_reaches_the_gate() -> None:
    config = load_project_config(REPO)
    cases = run_golden(CORPUS / "redteam.yaml", config)
    commands = [c for c in cases if "commands" in str(c.location.key_path)]
    assert len(commands) >= 150 + 27 and len(cases) - len(commands) >= 30
    assert all(c.at_least and c.expected >= RiskLevel.ORANGE and c.ok for c in cases)


def test_at_most_a_tenth_of_benign_ci_steps_are_gated() -> None:
    corpus = yaml.safe_load(BENIGN.read_text())
    profile = load_vm_profile("build", load_project_config(REPO), REPO)
    relaxations = profile.relaxations() + [Relaxation("network", entry) for entry in corpus["network"]]
    policy = load_policy_file(REPO / "profiles/risk/default.yaml")
    gated = [step["run"] for step in corpus["steps"] if grade_script(policy, step["run"], relaxations).gate]
    assert len(corpus["steps"]) >= 300
    assert len(gated) / len(corpus["steps"]) <= 0.10, gated
