"""The backend registry: its names are the schemas' enum, its factories load a backend only when called, and
the optional capabilities are found by isinstance against the backends that have them."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lg.config.project import load_project_config
from lg.errors import ExitCode, InvalidInput
from lg.model import HYPERVISOR_CHOICES, HYPERVISOR_NAMES
from lg.vm.api import HandOverVm, HostProbe, IdentityVm, ProcessVm, SnapshotBackend
from lg.vm.registry import HYPERVISORS, hypervisor_for
from tests.conftest import CliResult

REPO = Path(__file__).resolve().parents[2]


def test_the_registry_s_names_are_the_schemas_enum() -> None:
    assert tuple(HYPERVISORS) == HYPERVISOR_NAMES


def test_each_factory_makes_a_backend_of_its_own_name(tmp_path: Path) -> None:
    config = load_project_config(tmp_path)
    for name in HYPERVISORS:
        assert hypervisor_for(config, name).name == name


def test_an_unknown_hypervisor_is_invalid_input_naming_the_known_ones(tmp_path: Path) -> None:
    known = re.escape(", ".join(HYPERVISOR_CHOICES))
    with pytest.raises(InvalidInput, match=rf"unknown hypervisor 'vmware' \(known: {known}\)") as refused:
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


# --- hypervisor: auto, unknown names, unavailable ones -----------------------------------------------------


def _probe(name: str, can_run: bool) -> HostProbe:
    from lg.vm.api import KvmStatus, Problem

    problems = () if can_run else (Problem(f"{name} is not here", f"install {name}", fatal=True),)
    return HostProbe(name, Path(f"/usr/bin/{name}") if can_run else None, "1.0", KvmStatus(True, None, "-"),
                     "kvm" if can_run else None, problems)


class _Stub:
    def __init__(self, name: str, can_run: bool) -> None:
        self.name, self.can_run = name, can_run

    def probe(self, image: object = None) -> HostProbe:
        return _probe(self.name, self.can_run)

    def boot(self, spec: object) -> None:
        raise AssertionError("not booted in these tests")


def _stub_registry(monkeypatch: pytest.MonkeyPatch, runnable: set[str]) -> None:
    for name in HYPERVISORS:
        monkeypatch.setitem(HYPERVISORS, name, lambda config, name=name: _Stub(name, name in runnable))


def test_auto_resolves_to_the_best_backend_whose_probe_can_run(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from lg.vm.registry import AUTO_ORDER, resolve

    config = load_project_config(tmp_path)
    assert set(AUTO_ORDER) == set(HYPERVISORS) and AUTO_ORDER[-1] == "qemu"  # the one that runs without KVM last
    _stub_registry(monkeypatch, {"qemu", "firecracker"})
    assert resolve(config, "auto") == "firecracker"
    assert hypervisor_for(config, "auto").name == "firecracker"
    _stub_registry(monkeypatch, {"qemu"})
    assert resolve(config, "auto") == "qemu"
    assert resolve(config, "firecracker") == "firecracker"  # a name stands for itself, runnable or not


def test_auto_with_no_runnable_backend_is_exit_5_with_each_reason(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lg.errors import EnvironmentUnfit
    from lg.vm.registry import resolve

    _stub_registry(monkeypatch, set())
    with pytest.raises(EnvironmentUnfit, match="found no backend") as unfit:
        resolve(load_project_config(tmp_path), "auto")
    assert unfit.value.exit_code == ExitCode.ENVIRONMENT == 5
    assert all(f"{name}: {name} is not here" in unfit.value.message for name in HYPERVISORS)


def test_pool_keys_are_per_resolved_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lg.pool.key import key_for
    from lg.vm.api import VmSpec
    from tests.vm.conftest import ImageFiles

    spec = VmSpec(image=ImageFiles("t", "d" * 64, Path("k"), Path("i"), None, ()))
    assert key_for("qemu", spec, "p") != key_for("firecracker", spec, "p")
    assert key_for("qemu", spec, "p").label.startswith("qemu/")


def test_a_pipeline_naming_an_unknown_hypervisor_is_exit_2_listing_the_choices(
        tmp_path: Path, lg: Callable[..., CliResult]) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nhypervisor: vmware\nsteps:\n  - {id: a, run: echo}\n")
    result = lg("validate", pipeline)
    assert result.code == 2
    assert all(name in result.out + result.err for name in HYPERVISOR_CHOICES), result.out + result.err


def test_a_known_hypervisor_this_host_cannot_run_is_exit_5_with_why_and_fix(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lg.errors import EnvironmentUnfit
    from lg.runner.plan import require_hypervisor

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    for name, why in (("firecracker", "firecracker is not installed"),
                      ("cloud-hypervisor", "cloud-hypervisor is not installed"),
                      ("apple", "macOS")):
        if name not in HYPERVISORS:
            continue
        with pytest.raises(EnvironmentUnfit, match=f"hypervisor '{name}' cannot run VMs on this host: .*{why}") as no:
            require_hypervisor(load_project_config(tmp_path), name)
        assert no.value.exit_code == 5 and no.value.fix


def test_doctor_lists_every_backend_with_its_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   lg: Callable[..., CliResult]) -> None:
    import json

    from tests.vm.test_doctor import TINY, fake_store

    monkeypatch.setenv("LG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    fake_store(monkeypatch, [TINY])
    result = lg("doctor", "--json", "--no-boot")
    checks = {check["name"]: check for check in json.loads(result.out)["checks"]}
    assert set(HYPERVISOR_NAMES) <= set(checks)
    assert checks["qemu"]["status"] == "ok"
    for name in set(HYPERVISOR_NAMES) - {"qemu"}:
        assert checks[name]["status"] in ("off", "ok") and checks[name]["detail"]
    text = lg("doctor", "--no-boot").out
    assert all(f" {name} " in text for name in HYPERVISOR_NAMES)
