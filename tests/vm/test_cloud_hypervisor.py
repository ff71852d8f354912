"""The Cloud Hypervisor backend against a fake cloud-hypervisor held to the published API of v53.0.

Real: lg's backend code, its HTTP client, the VMM processes it starts and kills, the hybrid vsock handshake, lg's
guest agent. Stood in (tests/vm/fakevmm): the cloud-hypervisor binary (not obtainable here), KVM, the guest
kernel. Every test fails if lg sends a request the contract (tests/vm/contracts/cloud-hypervisor-v53.0.json)
does not allow."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lg.testing import conformance
from lg.testing.conformance import Capability
from lg.vm.api import ExecRequest, SnapshotBackend, Vm, VmSpec
from lg.vm.cloud_hypervisor import CloudHypervisor
from lg.vm.unix_http import ApiClient, ApiError
from tests.vm.conftest import ImageFiles
from tests.vm.fakevmm.contract import read_journal

pytestmark = pytest.mark.usefixtures("no_contract_violation")
FAKE_CAPABILITIES = frozenset({Capability.GUEST_PATHS, Capability.VMM_PROCESS, Capability.SNAPSHOTS})


@pytest.fixture
def hypervisor(fake_bin: dict[str, Path], tmp_path: Path) -> CloudHypervisor:
    return CloudHypervisor(state_dir=tmp_path, binary=str(fake_bin["cloud-hypervisor"]))


@pytest.fixture
def spec(fake_image: ImageFiles, tmp_path: Path) -> VmSpec:
    return VmSpec(image=fake_image, run_dir=tmp_path / "vms", hostname="lg-test", boot_timeout=30)


@pytest.fixture(scope="module")
def shared_vm(fake_bin: dict[str, Path], fake_image: ImageFiles, journal_path: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    tmp = tmp_path_factory.mktemp("ch-shared")
    hypervisor = CloudHypervisor(state_dir=tmp, binary=str(fake_bin["cloud-hypervisor"]))
    with hypervisor.boot(VmSpec(image=fake_image, run_dir=tmp / "vms", boot_timeout=30)) as vm:
        yield vm


@pytest.mark.parametrize("check", conformance.vm_params(FAKE_CAPABILITIES))
def test_conformance_on_the_fake(shared_vm: Vm, check: conformance.VmCheck, tmp_path: Path) -> None:
    check(shared_vm, tmp_path)


@pytest.mark.parametrize("check", conformance.backend_params(FAKE_CAPABILITIES))
def test_backend_conformance_on_the_fake(hypervisor: CloudHypervisor, spec: VmSpec,
                                         check: conformance.BackendCheck) -> None:
    check(hypervisor, spec)


def _entries(journal_path: Path, since: int) -> list[dict[str, object]]:
    return [entry for entry in read_journal(journal_path)[since:] if "request" in entry]


def test_boot_creates_then_boots_with_the_documented_config(hypervisor: CloudHypervisor,
                                                            fake_disk_image: ImageFiles, tmp_path: Path,
                                                            journal_path: Path) -> None:
    since = len(read_journal(journal_path))
    spec = VmSpec(image=fake_disk_image, run_dir=tmp_path / "vms", vcpus=2, memory_mib=512, boot_timeout=30)
    with hypervisor.boot(spec) as vm:
        assert vm.exec(ExecRequest(script="exit 3")).exit_code == 3
        assert vm.host_confinement["jailer"].startswith("none")
    entries = _entries(journal_path, since)
    assert [e["request"] for e in entries] == ["PUT /api/v1/vm.create", "PUT /api/v1/vm.boot"]
    config = entries[0]["body"]
    assert isinstance(config, dict)
    assert config["cpus"] == {"boot_vcpus": 2, "max_vcpus": 2} and config["memory"] == {"size": 512 << 20}
    assert config["vsock"]["cid"] == 3 and "lg.agent=vsock:1024" in config["payload"]["cmdline"].split()
    assert config["disks"][0]["readonly"] is False


def test_snapshot_pauses_then_writes_the_directory_and_clones_restore_with_resume(
        hypervisor: CloudHypervisor, spec: VmSpec, tmp_path: Path, journal_path: Path) -> None:
    assert isinstance(hypervisor, SnapshotBackend)
    snapshot = tmp_path / "snap"
    with hypervisor.boot(spec) as vm:
        assert vm.exec(ExecRequest(script="echo kept > /tmp/kept")).ok
        since = len(read_journal(journal_path))
        hypervisor.save_snapshot(vm, snapshot)
        assert [e["request"] for e in _entries(journal_path, since)] == ["PUT /api/v1/vm.pause",
                                                                        "PUT /api/v1/vm.snapshot"]
    assert {"config.json", "memory-ranges", "state.json"} <= {p.name for p in snapshot.iterdir()}
    since = len(read_journal(journal_path))
    with hypervisor.restore(snapshot, spec) as first, hypervisor.restore(snapshot, spec) as second:
        for clone in (first, second):
            assert conformance.run(clone, "cat /tmp/kept")[:2] == (0, b"kept\n")
    restores = [e for e in _entries(journal_path, since) if e["request"] == "PUT /api/v1/vm.restore"]
    assert len(restores) == 2 and all(e["body"]["resume"] is True for e in restores)  # type: ignore[index]


def test_the_fake_answers_what_the_document_says(fake_bin: dict[str, Path], tmp_path: Path,
                                                 journal_path: Path) -> None:
    socket_path = tmp_path / "api.sock"
    process = subprocess.Popen([str(fake_bin["cloud-hypervisor"]), "--api-socket", f"path={socket_path}"],
                               cwd=tmp_path)
    try:
        api = ApiClient(socket_path, base="/api/v1")
        api.wait_listening(time.monotonic() + 20, lambda: None)
        since = len(read_journal(journal_path))
        assert api.call("GET", "/vmm.ping").body["version"] == "v53.0"
        cases = [("PUT", "/vm.boot", None, 404), ("PUT", "/vm.pause", None, 404),
                 ("PUT", "/vm.create", {"cpus": {"boot_vcpus": 1, "max_vcpus": 1}}, 400),  # no payload
                 ("PUT", "/vm.create", {"payload": {}, "memory": {"size": "1G"}}, 400),
                 ("PUT", "/vm.create", {"payload": {}, "vsock": {"cid": 2, "socket": "x"}}, 400)]
        for method, path, body, status in cases:
            with pytest.raises(ApiError) as refused:
                api.call(method, path, body)
            assert refused.value.status == status
        assert len([e for e in read_journal(journal_path)[since:] if e.get("violations")]) == len(cases)
    finally:
        process.terminate()
        process.wait(timeout=10)
    journal_path.write_text("".join(line + "\n" for line in journal_path.read_text().splitlines()[:since]))


def test_probe_without_the_binary_is_fatal_and_says_how_to_install(tmp_path: Path) -> None:
    probe = CloudHypervisor(state_dir=tmp_path, binary="no-such-cloud-hypervisor").probe()
    assert not probe.can_run and "cloud-hypervisor/releases" in (probe.problems[0].fix or "")


def test_probe_with_the_binary_reports_its_version(fake_bin: dict[str, Path], tmp_path: Path) -> None:
    assert CloudHypervisor(state_dir=tmp_path, binary=str(fake_bin["cloud-hypervisor"])).probe().version == "53.0"


def test_a_snapshot_names_its_backend(hypervisor: CloudHypervisor, spec: VmSpec, tmp_path: Path) -> None:
    with hypervisor.boot(spec) as vm:
        hypervisor.save_snapshot(vm, tmp_path / "snap")
    assert json.loads((tmp_path / "snap" / "lg-snapshot.json").read_text())["backend"] == "cloud-hypervisor"
