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


def _imports(package: str) -> dict[str, set[str]]:
    """Every lg module under `package` and the lg modules it imports, lazily inside functions included."""
    import ast

    found: dict[str, set[str]] = {}
    for path in (REPO / "lg").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if not module.startswith(package):
            continue
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        found[module] = {target for target in targets if target.startswith("lg.") and target != module}
    return found


def test_no_backend_module_is_imported_outside_lg_vm() -> None:
    backends = ("lg.vm.qemu",)  # and every module of one: lg.vm.qemu_vm, lg.vm.qemu_snapshot, ...
    offenders = {module: sorted(t for t in targets if t.startswith(backends))
                 for module, targets in _imports("lg").items() if not module.startswith("lg.vm.")}
    assert {module: found for module, found in offenders.items() if found} == {}


def test_lg_vm_imports_nothing_of_the_layers_above_it() -> None:
    above = ("lg.pool", "lg.runner", "lg.cli", "lg.testing")
    offenders = {module: sorted(t for t in targets if t.startswith(above))
                 for module, targets in _imports("lg.vm").items()}
    assert {module: found for module, found in offenders.items() if found} == {}


@pytest.mark.parametrize("package", ["lg.vm", "lg.pool", "lg.testing"])
def test_no_import_cycle_between_files(package: str) -> None:
    graph = _imports(package)
    edges = {module: {t for t in targets if t in graph} for module, targets in graph.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for step in edges[start] - seen:
            seen.add(step)
            if step == goal or reaches(step, goal, seen):
                return True
        return False

    assert sorted(module for module in edges if reaches(module, module, set())) == []
