"""The package installs anywhere (issue #19 item 8): lg's wheel, built from this checkout and installed into a
fresh virtualenv outside it, runs `lg init`, `lg validate` and a real `lg run` (real VMs) in an empty
directory, with no checkout on its path. The guest images come from the shared cache (~/.cache/luminaguard),
where the installed lg finds them by the same recipe key: the wheel carries the same recipes and guest code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.vm]

_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".lg", "build", "dist", "*.egg-info", "__pycache__",
                                     ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")


def _run(argv: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.timeout(1800)
def test_wheel_installed_in_a_fresh_venv_inits_validates_and_runs(tmp_path: Path, tiny_image_ready: None) -> None:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "LG_STATE_DIR", "LG_CACHE_DIR", "GITHUB_ACTIONS")}
    source = tmp_path / "source"  # building in the checkout would leave build/ and *.egg-info in it
    shutil.copytree(REPO, source, symlinks=True, ignore=_NOT_SOURCE)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "wheels", source],
         tmp_path, env)
    (wheel,) = (tmp_path / "wheels").glob("luminaguard-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    _run([venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel], tmp_path, env)
    env = {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}
    installed = _run([venv / "bin" / "python", "-c", "import lg; print(lg.__file__)"], tmp_path, env)
    assert installed.strip().startswith(str(venv)), installed
    project = tmp_path / "empty"
    project.mkdir()
    out = _run(["lg", "init"], project, env)
    assert "wrote " in out and (project / "profiles" / "risk" / "default.yaml").is_file()
    lg_yaml = project / "lg.yaml"  # the shared cache's `tiny` image: the smallest that runs the example
    lg_yaml.write_text(lg_yaml.read_text().replace("image: default", "image: tiny"))
    assert "ok: pipeline.yaml" in _run(["lg", "validate", "pipeline.yaml"], project, env)
    ran = _run(["lg", "run", "pipeline.yaml", "--input", "greeting=bonjour", "--junit", "junit.xml"], project, env)
    assert "[check] bonjour from Linux" in ran, ran
    assert (project / "out" / "greeting.txt").read_text() == "bonjour from Linux\n"
    assert "<testcase name=\"check\"" in (project / "junit.xml").read_text()
