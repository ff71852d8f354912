"""Preflight probes every hypervisor the steps use, through the registry, before anything boots."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lg.config.project import load_project_config
from lg.errors import EnvironmentUnfit, ExitCode, InvalidInput
from lg.inputs.run_inputs import RunInputs, load_run_inputs
from lg.runner.plan import preflight
from lg.testing.fake import FakeHypervisor
from lg.testing.images import stand_in_image
from lg.vm import registry
from lg.vm.api import GuestImage, HostProbe, KvmStatus, Problem


@pytest.fixture
def loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunInputs:
    (tmp_path / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\n")
    (tmp_path / "p.yaml").write_text("name: p\nsteps:\n  - {id: a, run: echo}\n  - {id: b, run: echo}\n")
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    stand_in_image(load_project_config(tmp_path), "tiny")
    return load_run_inputs(tmp_path / "p.yaml", with_images=True)


class Probed(FakeHypervisor):
    def __init__(self, probes: list[str], name: str, fatal: Problem | None = None) -> None:
        super().__init__()
        self.probes, self.fatal, self.name = probes, fatal, name

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        self.probes.append(self.name)
        if self.fatal is None:
            return super().probe(image)
        return HostProbe(self.name, None, None, KvmStatus(False, None, "-"), None, (self.fatal,))


def test_each_hypervisor_the_steps_use_is_probed_once(loaded: RunInputs,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = loaded.pipeline
    probes: list[str] = []
    for name in ("qemu", "spare"):
        monkeypatch.setitem(registry.HYPERVISORS, name, lambda config, name=name: Probed(probes, name))
    first, second = pipeline.steps
    pipeline = replace(pipeline, steps=(first, replace(second, hypervisor="spare")))
    preflight(replace(loaded, pipeline=pipeline))
    assert probes == ["qemu", "spare"]  # lg.yaml's for the first step, its own for the second


def test_a_hypervisor_that_cannot_run_vms_here_stops_the_run_with_its_fix(loaded: RunInputs,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = loaded.pipeline
    missing = Problem("vmm-x is not installed", "apt-get install vmm-x", fatal=True)
    monkeypatch.setitem(registry.HYPERVISORS, "qemu", lambda config: Probed([], "qemu", missing))
    with pytest.raises(EnvironmentUnfit, match="hypervisor 'qemu' cannot run VMs on this host: vmm-x is not") as unfit:
        preflight(replace(loaded, pipeline=pipeline))
    assert unfit.value.exit_code == ExitCode.ENVIRONMENT and unfit.value.fix == "apt-get install vmm-x"


def test_qemu_missing_from_the_path_says_how_to_install_it(loaded: RunInputs,
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pipeline = loaded.pipeline
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(EnvironmentUnfit, match="qemu-system-x86_64 is not installed") as unfit:
        preflight(replace(loaded, pipeline=pipeline))
    assert "apt-get install qemu-system-x86" in (unfit.value.fix or "")


def test_an_unknown_hypervisor_is_invalid_input(loaded: RunInputs) -> None:
    pipeline = loaded.pipeline
    with pytest.raises(InvalidInput, match="unknown hypervisor 'vmware'"):
        preflight(replace(loaded, pipeline=replace(pipeline, hypervisor="vmware", steps=tuple(
            replace(step, hypervisor=None) for step in pipeline.steps))))
