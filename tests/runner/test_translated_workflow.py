"""A real workflow end to end in real VMs: pallets/click's GitHub Actions CI translated to lg
(tests/runner/click_ci/pipeline.yaml names the source files and commits). A matrix given by `include` entries,
a cache keyed by hashFiles(), an artifact passed from the build to a later step's VM, a cleanup step that runs
whatever happens, and a JUnit report read back by junitparser."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from junitparser import Failure, JUnitXml, Skipped

from lg.runner.step_cache import StepCache

pytestmark = pytest.mark.vm

SOURCE = Path(__file__).with_name("click_ci")


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_image_ready: None) -> Path:
    root = tmp_path / "click-ci"
    shutil.copytree(SOURCE / "project", root)
    shutil.copy(SOURCE / "pipeline.yaml", root / "pipeline.yaml")
    (root / "lg.yaml").write_text("image: default\nstate_dir: .lg\n")
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.chdir(root)
    return root


def report(path: Path) -> dict[str, Any]:
    suites = JUnitXml.fromfile(str(path))
    cases = {case.name: case for suite in suites for case in suite}
    return {name: ("failure" if any(isinstance(r, Failure) for r in case.result)
                   else "skipped" if any(isinstance(r, Skipped) for r in case.result) else "passed")
            for name, case in cases.items()}


def test_clicks_ci_translated_runs_with_matrix_cache_artifact_cleanup_and_junit(
        lg: Callable[..., Any], checkout: Path) -> None:
    first = lg("run", "pipeline.yaml", "--junit", "reports/junit.xml")
    assert first.code == 0, first.out + first.err
    assert report(checkout / "reports" / "junit.xml") == {
        "tests-linux-3-11-py311": "passed", "tests-typing-3-11-typing": "passed", "build": "passed",
        "provenance": "passed", "cleanup": "passed"}
    assert (checkout / "provenance.txt").read_text() == "verified\n"  # the artifact reached the later VM intact
    assert (checkout / "cleanup.txt").exists() and not (checkout / ".mypy_cache").exists()
    assert any(".mypy_cache" in entry.paths for entry in StepCache(checkout / ".lg" / "cache").entries())

    second = lg("run", "pipeline.yaml", "--junit", "reports/junit.xml")
    assert second.code == 0, second.out + second.err
    assert "typing: cache restored from" in second.out

    (checkout / "src" / "greet" / "__init__.py").write_text("def greet(name: str) -> str:\n    return 'no'\n")
    broken = lg("run", "pipeline.yaml", "--junit", "reports/junit.xml")
    assert broken.code == 1, broken.out + broken.err
    assert report(checkout / "reports" / "junit.xml") == {
        "tests-linux-3-11-py311": "failure", "tests-typing-3-11-typing": "passed", "build": "skipped",
        "provenance": "skipped", "cleanup": "passed"}  # the cleanup ran after the failure; the run still failed
