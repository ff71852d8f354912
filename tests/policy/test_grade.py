"""Grading with the shipped policies: compound commands, wrappers, nesting, fail-closed, effects, relaxations."""

from __future__ import annotations

import pytest

from lg.model import FileChange
from lg.policy.grade import grade_command, grade_effects, grade_relaxations
from lg.policy.levels import RiskLevel
from lg.policy.load import load_policy_file
from lg.policy.model import Relaxation, RiskPolicy
from lg.policy.shell import analyse
from tests.conftest import REPO

DEFAULT = load_policy_file(REPO / "profiles/risk/default.yaml")
STRICT = load_policy_file(REPO / "profiles/risk/strict.yaml")


def level(command: str, policy: RiskPolicy = DEFAULT) -> str:
    return grade_command(policy, command).level.label


@pytest.mark.parametrize("command", [
    "rm -rf /", "rm -fr /", "rm -r -f /", "rm --recursive --force /", "rm -Rf /",
    "\\rm -rf /", "'rm' -rf /", "r''m -rf /", "/bin/rm -rf /",
    "sudo rm -rf /", "timeout 5 nice -n 3 env A=1 rm -rf /", "sh -c 'rm -rf /'", "bash -c \"bash -c 'rm -rf /'\"",
    "eval 'rm -rf /'", "echo ok && rm -rf / || true", "(cd / && rm -rf *)", "echo $(rm -rf /)", "f() { rm -rf /; }",
    "bash <<EOF\nrm -rf /\nEOF",
])
def test_every_spelling_of_rm_rf_root_is_red(command: str) -> None:
    assert level(command) == "red"


@pytest.mark.parametrize("command", [
    "$CMD -rf /", "${X} -rf /", "$(echo rm) -rf /", "eval \"$PAYLOAD\"", "bash -c \"$S\"", "$'\\x72m' -rf /",
    "echo 'unterminated", "{{ steps.a.outputs.cmd }} go", "python3 -c \"$(curl -s x)\"", "bash <(curl -s x)",
])
def test_what_cannot_be_analysed_is_at_least_orange(command: str) -> None:
    assessment = grade_command(DEFAULT, command)
    assert assessment.level >= RiskLevel.ORANGE and assessment.unanalysable and assessment.gate
    assert any(m.reason.startswith("cannot be analysed") for m in assessment.matches)


def test_pipes_to_shells_and_decoders() -> None:
    assert level("curl -fsSL https://x | sh") == "red"
    assert level("echo cm0gLXJmIC8K | base64 -d | bash") == "red"
    assert level("curl -o install.sh https://x") == "yellow"


def test_templates_in_arguments_are_opaque_words() -> None:
    assert level("echo {{ steps.build.outputs.version }}") == "green"


def test_redirections_to_system_paths() -> None:
    assessment = grade_command(DEFAULT, "echo x >> /etc/sudoers")
    assert assessment.level == RiskLevel.RED
    assert assessment.matches[0].span == ">> /etc/sudoers"
    assert level("make > build.log 2>&1") == "green"


def test_unknown_programs_take_the_default_level() -> None:
    assessment = grade_command(DEFAULT, "./deploy.sh --prod")
    assert (assessment.level, assessment.gate) == (RiskLevel.YELLOW, False)
    assert assessment.matches[0].rule_id == "policy.default_level"
    assert grade_command(STRICT, "./deploy.sh --prod").gate


def test_highest_level_wins_and_every_match_is_listed() -> None:
    assessment = grade_command(DEFAULT, "curl -s https://x | sudo bash")
    assert assessment.level == RiskLevel.RED
    rules = [m.rule_id for m in assessment.matches]
    assert rules[0] == "exec.remote.pipe_to_shell" and "exec.privilege.escalate" in rules
    assert [m.level for m in assessment.matches] == sorted((m.level for m in assessment.matches), reverse=True)


def test_deny_refuses_outright() -> None:
    assessment = grade_command(STRICT, "pip install requests")
    assert assessment.denied
    assert not grade_command(DEFAULT, "pip install requests").denied


def test_effects() -> None:
    ci = grade_effects(DEFAULT, [FileChange(".github/workflows/ci.yml", "modified")])
    assert (ci.level, ci.gate, ci.matches[0].rule_id) == (RiskLevel.ORANGE, True, "effects.ci_config")
    assert grade_effects(DEFAULT, [FileChange("src/app.py", "modified")]).level == RiskLevel.GREEN
    many = [FileChange(f"f{i}.txt", "deleted") for i in range(51)]
    assert grade_effects(DEFAULT, many).matches[0].rule_id == "effects.mass_deletion"
    assert not grade_effects(DEFAULT, many[:50]).gate
    link = grade_effects(DEFAULT, [FileChange("a/link", "created", symlink_target="../../etc")])
    assert link.level == RiskLevel.RED
    executable = grade_effects(DEFAULT, [FileChange("run.sh", "created", mode=0o755)])
    assert executable.matches[0].rule_id == "effects.new_executable"
    assert grade_effects(STRICT, [FileChange("src/app.py", "modified")]).gate


def test_relaxations_and_unknown_ones_fail_closed() -> None:
    assert grade_relaxations(DEFAULT, [Relaxation("capability", "CAP_SYS_ADMIN")]).level == RiskLevel.RED
    assert grade_relaxations(DEFAULT, [Relaxation("capability", "CAP_CHOWN")]).level == RiskLevel.YELLOW
    unknown = grade_relaxations(DEFAULT, [Relaxation("teleport", "x")])
    assert (unknown.level, unknown.matches[0].rule_id) == (RiskLevel.ORANGE, "policy.unknown_relaxation")


def test_analysis_sees_through_wrappers_and_pipelines() -> None:
    invocations = analyse("find . -name x | xargs -I{} timeout 5 rm {}").invocations
    programs = [(i.program, i.via, i.piped_from) for i in invocations]
    assert ("rm", ("xargs", "timeout"), ("find",)) in programs


def test_json_shape() -> None:
    data = grade_command(DEFAULT, "git push --force").to_json()
    assert set(data) >= {"level", "gate", "matches"}
    assert data["level"] == "red" and data["gate"] is True
    assert set(data["matches"][0]) >= {"rule", "level", "reason", "span"}
