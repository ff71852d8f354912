"""The backend registry: its names are the schemas' enum, its factories load a backend only when called, and
the optional capabilities are found by isinstance against the backends that have them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lg.config.project import load_project_config
from lg.errors import ExitCode, InvalidInput
from lg.model import HYPERVISOR_NAMES
from lg.vm.api import HandOverVm, IdentityVm, ProcessVm, SnapshotBackend
from lg.vm.registry import HYPERVISORS, hypervisor_for

REPO = Path(__file__).resolve().parents[2]


def test_the_registry_s_names_are_the_schemas_enum() -> None:
    assert tuple(HYPERVISORS) == HYPERVISOR_NAMES


def test_each_factory_makes_a_backend_of_its_own_name(tmp_path: Path) -> None:
    config = load_project_config(tmp_path)
    for name in HYPERVISORS:
        assert hypervisor_for(config, name).name == name


def test_an_unknown_hypervisor_is_invalid_input_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"unknown hypervisor 'vmware' \(known: qemu\)") as refused:
        hypervisor_for(load_project_config(tmp_path), "vmware")
    assert refused.value.exit_code == ExitCode.INVALID_INPUT == 2


def test_the_registry_imports_no_backend_until_one_is_made() -> None:
    code = ("import sys; import lg.vm.registry, lg.pool.provider, lg.runner.engine; "
            "print(sorted(m for m in sys.modules if m.startswith('lg.vm.qemu')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_qemu_declares_what_the_pool_and_daemon_use(tmp_path: Path) -> None:
    from lg.vm.qemu import QemuHypervisor
    from lg.vm.qemu_vm import QemuVm

    assert isinstance(QemuHypervisor(state_dir=tmp_path), SnapshotBackend)
    vm = QemuVm("vm-x", "tcg", tmp_path)
    assert isinstance(vm, HandOverVm) and isinstance(vm, IdentityVm) and isinstance(vm, ProcessVm)
