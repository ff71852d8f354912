"""Effects rules of the default policy (issue 18): what comes back to the host is held when it should be."""

from __future__ import annotations

from pathlib import Path

import pytest

from lg.model import FileChange
from lg.policy.content import DirContent, InlineContent
from lg.policy.grade import grade_effects
from lg.policy.levels import RiskLevel
from lg.policy.load import load_policy_file
from tests.conftest import REPO

DEFAULT = load_policy_file(REPO / "profiles/risk/default.yaml")
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"


def grade(*changes: FileChange, content: InlineContent | DirContent | None = None) -> tuple[RiskLevel, set[str]]:
    assessment = grade_effects(DEFAULT, changes, content)
    return assessment.level, {match.rule_id for match in assessment.matches}


@pytest.mark.parametrize(("path", "rule"), [
    (".ssh/config", "effects.ssh"), ("home/ci/.ssh/authorized_keys", "effects.ssh"), ("authorized_keys", "effects.ssh"),
    ("deploy/id_ed25519", "effects.credentials"), (".bashrc", "effects.shell_startup"),
    ("home/u/.zshenv", "effects.shell_startup"), (".profile", "effects.shell_startup"),
    ("sitecustomize.py", "effects.python_startup"), ("lib/usercustomize.py", "effects.python_startup"),
    (".venv/lib/python3.11/site-packages/evil.pth", "effects.python_startup"), (".npmrc", "effects.package_hooks"),
    ("pip.conf", "effects.package_hooks"), ("setup.py", "effects.package_hooks"), (".github/workflows/ci.yml",
                                                                                    "effects.ci_config"),
    (".github/actions/x/action.yml", "effects.ci_config"), (".gitlab-ci.yml", "effects.ci_config"),
    ("Jenkinsfile", "effects.ci_config"), (".circleci/config.yml", "effects.ci_config"),
    ("azure-pipelines.yml", "effects.ci_config"), (".git/config", "effects.repository_internals"),
    (".git/hooks/post-checkout", "effects.repository_internals"), (".gitattributes", "effects.repository_internals"),
    ("profiles/risk/default.yaml", "effects.lg_policy"),
])
def test_sensitive_paths_are_held(path: str, rule: str) -> None:
    level, rules = grade(FileChange(path, "created", size=10, mode=0o644))
    assert rule in rules and level >= DEFAULT.thresholds.effects


def test_a_symlink_is_not_a_new_executable_but_one_leaving_the_workspace_is_red() -> None:
    level, rules = grade(FileChange("latest", "created", mode=0o777, symlink_target="build/v2"))
    assert level == RiskLevel.GREEN and not rules
    level, rules = grade(FileChange("latest", "created", mode=0o777, symlink_target="../../etc"))
    assert level == RiskLevel.RED and rules == {"effects.symlink_escape"}
    assert "effects.new_executable" in grade(FileChange("run.sh", "created", mode=0o755))[1]


def test_setuid_and_setgid_bits() -> None:
    assert "effects.setuid" in grade(FileChange("tool", "created", mode=0o4755))[1]
    assert "effects.setuid" in grade(FileChange("tool", "modified", mode=0o2755, old_mode=0o755))[1]


def test_large_deletions() -> None:
    changes = [FileChange(f"src/f{i}.py", "deleted") for i in range(51)]
    assert "effects.mass_deletion" in grade(*changes)[1]


def test_dependency_pins_replaced_by_urls_or_losing_hashes(tmp_path: Path) -> None:
    workspace, held = tmp_path / "ws", tmp_path / "held"
    for root, text in ((workspace, "requests==2.31.0 --hash=sha256:aa\nidna==3.6 --hash=sha256:bb\n"),
                       (held, "requests @ git+https://x.example/requests\nidna==3.6\n")):
        root.mkdir()
        (root / "requirements.txt").write_text(text)
    level, rules = grade(FileChange("requirements.txt", "modified", size=40), content=DirContent(workspace, held))
    assert level == RiskLevel.RED and {"effects.dependency_source", "effects.dependency_hashes_lost"} <= rules
    plain = InlineContent({"requirements.txt": "a==2\n"}, {"requirements.txt": "a==1\n"})
    level, rules = grade(FileChange("requirements.txt", "modified"), content=plain)
    assert level == RiskLevel.ORANGE and rules == {"effects.dependencies"}


def test_package_json_install_scripts_and_build_backend_changes() -> None:
    scripts = InlineContent({"package.json": '{"scripts": {"postinstall": "node x.js"}}'}, {"package.json": "{}"})
    assert "effects.package_scripts" in grade(FileChange("package.json", "modified"), content=scripts)[1]
    backend = InlineContent({"pyproject.toml": '[build-system]\nbuild-backend = "x"\n'},
                            {"pyproject.toml": '[build-system]\nbuild-backend = "setuptools.build_meta"\n'})
    assert "effects.build_backend" in grade(FileChange("pyproject.toml", "modified"), content=backend)[1]
    broken = InlineContent({"pyproject.toml": "[build-system\n"}, {"pyproject.toml": ""})
    assert "effects.build_backend" in grade(FileChange("pyproject.toml", "modified"), content=broken)[1]


def test_secrets_in_added_content_are_found_by_detect_secrets_and_never_shown(tmp_path: Path) -> None:
    workspace, held = tmp_path / "ws", tmp_path / "held"
    workspace.mkdir()
    (held / "config").mkdir(parents=True)
    (workspace / "config").mkdir()
    (workspace / "config/settings.py").write_text("DEBUG = True\n")
    (held / "config/settings.py").write_text(f'DEBUG = True\nAWS_ACCESS_KEY_ID = "{AWS_KEY}"\n')
    assessment = grade_effects(DEFAULT, [FileChange("config/settings.py", "modified")], DirContent(workspace, held))
    match = next(m for m in assessment.matches if m.rule_id == "effects.secrets")
    assert assessment.level == RiskLevel.RED and match.span == "config/settings.py:2: AWS Access Key"
    assert AWS_KEY not in str(assessment.to_json())


def test_a_secret_already_there_is_not_added() -> None:
    text = f'KEY = "{AWS_KEY}"\n'
    same = InlineContent({"a.py": text + "x = 1\n"}, {"a.py": text})
    assert "effects.secrets" not in grade(FileChange("a.py", "modified"), content=same)[1]


def test_a_private_key_is_found_by_its_content_anywhere() -> None:
    key = InlineContent({"notes/k.txt": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"})
    assert "effects.private_key_content" in grade(FileChange("notes/k.txt", "created"), content=key)[1]


def test_ordinary_source_changes_stay_green(tmp_path: Path) -> None:
    content = InlineContent({"src/app.py": "def f():\n    return 2\n"}, {"src/app.py": "def f():\n    return 1\n"})
    change = FileChange("src/app.py", "modified", mode=0o644, old_mode=0o644)
    assert grade(change, content=content)[0] == RiskLevel.GREEN
