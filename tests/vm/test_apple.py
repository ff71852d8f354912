"""The Apple Virtualization.framework backend on this Linux host: against a fake `Virtualization` module whose every
method checks lg's call against facts from pyobjc 12.2.2's metadata (tests/vm/fakevz.py), with lg's agent as the
stand-in guest. Real: lg.vm.apple's code, its completion-handler waits, the agent protocol over the socket the
socket device hands out. Stood in: macOS, the framework, the hypervisor, the guest kernel."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lg.testing import conformance
from lg.testing.conformance import Capability
from lg.vm.api import BootFailed, SnapshotBackend, Vm, VmSpec
from lg.vm.apple import ENTITLEMENT, SELECTORS, AppleHypervisor, MacHost
from tests.vm import fakevz
from tests.vm.conftest import ImageFiles
from tests.vm.fakevmm.contract import CONTRACTS

SONOMA_ARM = MacHost("Darwin", "14.5", "arm64", True)
FAKE_CAPABILITIES = frozenset({Capability.GUEST_PATHS, Capability.SNAPSHOTS})


@pytest.fixture(autouse=True)
def no_violation(journal_path: Path) -> Iterator[None]:  # journal_path: LG_GUEST_BIN for the stand-in guest
    before = len(fakevz.VIOLATIONS)
    yield
    assert fakevz.VIOLATIONS[before:] == [], "lg called the framework against pyobjc's metadata"


def apple(tmp: Path, mac: MacHost = SONOMA_ARM) -> AppleHypervisor:
    return AppleHypervisor(state_dir=tmp, framework=fakevz.fake_framework, mac=mac)


@pytest.fixture
def hypervisor(tmp_path: Path) -> AppleHypervisor:
    return apple(tmp_path)


@pytest.fixture
def spec(fake_image: ImageFiles, tmp_path: Path) -> VmSpec:
    return VmSpec(image=fake_image, run_dir=tmp_path / "vms", hostname="lg-test", boot_timeout=30)


@pytest.fixture(scope="module")
def shared_vm(fake_image: ImageFiles, journal_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    tmp = tmp_path_factory.mktemp("apple-shared")
    with apple(tmp).boot(VmSpec(image=fake_image, run_dir=tmp / "vms", boot_timeout=30)) as vm:
        yield vm


@pytest.mark.parametrize("check", conformance.vm_params(FAKE_CAPABILITIES))
def test_conformance_on_the_fake(shared_vm: Vm, check: conformance.VmCheck, tmp_path: Path) -> None:
    check(shared_vm, tmp_path)


@pytest.mark.parametrize("check", conformance.backend_params(FAKE_CAPABILITIES))
def test_backend_conformance_on_the_fake(hypervisor: AppleHypervisor, spec: VmSpec,
                                         check: conformance.BackendCheck) -> None:
    check(hypervisor, spec)


def test_every_selector_lg_calls_is_in_the_pyobjc_facts_with_its_arity() -> None:
    facts = json.loads((CONTRACTS / "pyobjc-virtualization-12.2.2.json").read_text())
    assert facts["source"]["version"] == "12.2.2"
    known = {(entry["class"], entry["selector"]): entry for entry in facts["selectors"]}
    assert set(SELECTORS) == set(known), "lg.vm.apple.SELECTORS and the facts file differ"
    for (cls, selector), entry in known.items():
        assert entry["objc_arguments"] == selector.count(":"), (cls, selector)
        metadata = entry["metadata"] or {}
        for index, argument in (metadata.get("arguments") or {}).items():
            assert 2 <= int(index) < 2 + entry["objc_arguments"], (cls, selector, index)
            if "block" in argument:  # every completion handler lg passes takes (error) or (result, error)
                assert argument["block"]["retval"] == "v" and argument["block"]["arguments"][0] == "^v"


def test_lg_s_source_calls_only_listed_selectors() -> None:
    """Every `obj.sel_like_this_(...)` call in lg/vm/apple.py is a selector of SELECTORS."""
    source = Path(__file__).resolve().parents[2] / "lg" / "vm" / "apple.py"
    names = {selector.replace(":", "_") for _cls, selector in SELECTORS}
    names.add("fileURLWithPath_")  # Foundation's NSURL, not the Virtualization framework
    called = {node.func.attr for node in ast.walk(ast.parse(source.read_text()))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr.endswith("_") and not node.func.attr.startswith("_")}
    assert called - names == set(), f"selectors called but not listed: {sorted(called - names)}"


def test_every_listed_selector_was_called_through_the_checked_fake(hypervisor: AppleHypervisor, spec: VmSpec,
                                                                    tmp_path: Path) -> None:
    with hypervisor.boot(spec) as vm:
        hypervisor.save_snapshot(vm, tmp_path / "snap")
    with hypervisor.restore(tmp_path / "snap", spec):
        pass
    disk_spec = VmSpec(image=ImageFiles("d", spec.image.digest, spec.image.kernel, spec.image.initrd,
                                        spec.image.kernel, ()), run_dir=spec.run_dir, boot_timeout=30)
    with hypervisor.boot(disk_spec):
        pass
    assert set(SELECTORS) - set(fakevz.CALLS) == set()


def test_probe_on_linux_is_fatal_and_names_macos(tmp_path: Path) -> None:
    probe = AppleHypervisor(state_dir=tmp_path, framework=fakevz.fake_framework).probe()
    assert not probe.can_run and "needs a macOS host" in probe.problems[0].message


def test_probe_on_macos_names_the_entitlement_and_old_versions(tmp_path: Path) -> None:
    assert apple(tmp_path).probe().auto_accelerator == "hvf"
    unsigned = apple(tmp_path, MacHost("Darwin", "14.5", "arm64", False)).probe()
    assert not unsigned.can_run and ENTITLEMENT in unsigned.problems[0].message
    intel = apple(tmp_path, MacHost("Darwin", "13.6", "x86_64", True)).probe()
    assert intel.can_run and any("macOS 14 on Apple silicon" in p.message for p in intel.problems)


def test_no_snapshot_where_the_os_does_not_allow_it(tmp_path: Path, spec: VmSpec) -> None:
    from lg.errors import EnvironmentUnfit

    hypervisor = apple(tmp_path, MacHost("Darwin", "13.6", "x86_64", True))
    assert isinstance(hypervisor, SnapshotBackend)
    with hypervisor.boot(spec) as vm, pytest.raises(EnvironmentUnfit, match="macOS 14 on Apple silicon"):
        hypervisor.save_snapshot(vm, tmp_path / "snap")


def test_restore_refuses_another_image(hypervisor: AppleHypervisor, spec: VmSpec, tmp_path: Path) -> None:
    from dataclasses import replace

    with hypervisor.boot(spec) as vm:
        hypervisor.save_snapshot(vm, tmp_path / "snap")
    other = replace(spec, image=ImageFiles("o", "0" * 64, spec.image.kernel, spec.image.initrd, None, ()))
    with pytest.raises(BootFailed, match="not an Apple snapshot of image"):
        hypervisor.restore(tmp_path / "snap", other)
