"""A project whose runs use lg's real command line in-process, with every backend replaced by
lg.testing.fake.FakeHypervisor (VMs are directories, commands run on the host): for the CI-facing features
(inputs, reports, init) where what matters is what the command line prints, writes and exits with."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from lg.config.project import load_project_config
from lg.model import ProjectConfig
from lg.testing.fake import FakeHypervisor
from lg.testing.images import stand_in_image
from lg.vm import registry
from lg.vm.api import Hypervisor


@pytest.fixture
def fake_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory (the working directory) with an lg.yaml, the `tiny` stand-in image, and runs on
    the fake backend; write `pipeline.yaml` with `pipeline_file`."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\npool: {snapshots: false}\n")
    for name in ("LG_STATE_DIR", "GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(root)
    stand_in_image(load_project_config(root), "tiny")

    def fake(config: ProjectConfig) -> Hypervisor:
        return FakeHypervisor(tmp_path / "vms")

    for name in list(registry.HYPERVISORS):
        monkeypatch.setitem(registry.HYPERVISORS, name, fake)
    return root


@pytest.fixture
def pipeline_file(fake_project: Path) -> Callable[[str], Path]:
    def write(body: str) -> Path:
        path = fake_project / "pipeline.yaml"
        path.write_text(textwrap.dedent(body))
        return path

    return write
