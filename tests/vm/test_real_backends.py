"""The shipped conformance suite against the real Firecracker, Cloud Hypervisor and Apple backends, wherever this
host can run them: each is skipped with its own probe's reason otherwise (on lg's development machines: no
firecracker or cloud-hypervisor binary, KVM that does not boot guests, no macOS). No code changes to run them on
a KVM host: put the binaries on PATH, build the image (`lg image build microvm`; LG_TEST_IMAGE picks another) and
run `pytest -m vm tests/vm/test_real_backends.py` (docs/backends.md)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lg.errors import LgError
from lg.testing import conformance
from lg.testing.conformance import Capability
from lg.vm.api import Hypervisor, Vm, VmSpec
from tests.vm.conftest import STATE_DIR, ImageFiles

pytestmark = pytest.mark.vm
BACKENDS = ("firecracker", "cloud-hypervisor", "apple")


def _backend(name: str) -> Hypervisor:
    if name == "firecracker":
        from lg.vm.firecracker import FirecrackerHypervisor

        return FirecrackerHypervisor(state_dir=STATE_DIR)
    if name == "cloud-hypervisor":
        from lg.vm.cloud_hypervisor import CloudHypervisor

        return CloudHypervisor(state_dir=STATE_DIR)
    from lg.vm.apple import AppleHypervisor

    return AppleHypervisor(state_dir=STATE_DIR)


def _capabilities(hypervisor: Hypervisor) -> frozenset[Capability]:
    jailed = getattr(hypervisor, "_use_jailer", lambda: False)()
    # A jailed Firecracker runs in its own pid namespace, started by a jailer that exits: not lg's child.
    # Apple's VMs run in the framework's XPC service: no VMM process of lg's either.
    if jailed or hypervisor.name == "apple":
        return conformance.ALL - {Capability.VMM_PROCESS}
    return conformance.ALL


def _image() -> ImageFiles:
    from lg.config.project import load_project_config
    from lg.images.store import require_image

    try:
        return ImageFiles.of(require_image(load_project_config(Path(__file__).resolve().parents[2]),
                                           os.environ.get("LG_TEST_IMAGE", "microvm")))
    except LgError as missing:
        pytest.skip(f"no image for the real backends: {missing}")


@pytest.fixture(scope="module", params=BACKENDS)
def real(request: pytest.FixtureRequest) -> Hypervisor:
    hypervisor = _backend(request.param)
    probe = hypervisor.probe()
    if not probe.can_run:
        pytest.skip(f"{request.param} cannot run here: " + "; ".join(p.message for p in probe.problems if p.fatal))
    return hypervisor


@pytest.fixture(scope="module")
def real_vm(real: Hypervisor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    with real.boot(VmSpec(image=_image(), run_dir=tmp_path_factory.mktemp("real-vm"))) as vm:
        yield vm


@pytest.mark.parametrize("check", conformance.vm_params(conformance.ALL))
def test_real_conformance(real: Hypervisor, real_vm: Vm, check: conformance.VmCheck, tmp_path: Path) -> None:
    if any(case.check is check and conformance.missing(case, _capabilities(real))
           for case in conformance.VM_CHECKS):
        pytest.skip(f"{real.name} lacks what this check needs")
    check(real_vm, tmp_path)


@pytest.mark.parametrize("check", conformance.backend_params(conformance.ALL))
def test_real_backend_conformance(real: Hypervisor, check: conformance.BackendCheck, tmp_path: Path) -> None:
    if any(case.check is check and conformance.missing(case, _capabilities(real))
           for case in conformance.BACKEND_CHECKS):
        pytest.skip(f"{real.name} lacks what this check needs")
    check(real, VmSpec(image=_image(), run_dir=tmp_path / "vms"))
