"""The Firecracker backend against a fake Firecracker (and jailer) held to the published API of v1.16.1.

Real: lg's backend code, its HTTP client on a unix socket, the processes it starts and kills, the hybrid vsock
handshake, lg's guest agent answering every request. Stood in (tests/vm/fakevmm): the firecracker and jailer
binaries (not obtainable here), KVM and the guest kernel. Every test fails if lg sends a request the contract
(tests/vm/contracts/firecracker-v1.16.1.json) does not allow. The real conformance suite is
tests/vm/test_real_backends.py, where a host has Firecracker and KVM (docs/backends.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lg.errors import EnvironmentUnfit
from lg.testing import conformance
from lg.testing.conformance import Capability
from lg.vm.api import BootFailed, ExecRequest, SnapshotBackend, Vm, VmSpec
from lg.vm.firecracker import FirecrackerHypervisor, FirecrackerVm
from lg.vm.unix_http import ApiClient, ApiError
from tests.vm.conftest import ImageFiles
from tests.vm.fakevmm.contract import read_journal

pytestmark = pytest.mark.usefixtures("no_contract_violation")

# What the fake can be held to: no guest kernel (the agent runs on the host), no confinement by a guest kernel.
FAKE_CAPABILITIES = frozenset({Capability.GUEST_PATHS, Capability.VMM_PROCESS, Capability.SNAPSHOTS})


def fake_firecracker(fake_bin: dict[str, Path], tmp: Path, jailer: bool = False) -> FirecrackerHypervisor:
    return FirecrackerHypervisor(state_dir=tmp, binary=str(fake_bin["firecracker"]),
                                 jailer_binary=str(fake_bin["jailer"]), jailer=jailer, cgroup_root=tmp / "cgroup")


@pytest.fixture
def hypervisor(fake_bin: dict[str, Path], tmp_path: Path) -> FirecrackerHypervisor:
    return fake_firecracker(fake_bin, tmp_path)


@pytest.fixture
def spec(fake_image: ImageFiles, tmp_path: Path) -> VmSpec:
    return VmSpec(image=fake_image, run_dir=tmp_path / "vms", hostname="lg-test", boot_timeout=30)


@pytest.fixture(scope="module")
def shared_vm(fake_bin: dict[str, Path], fake_image: ImageFiles, journal_path: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    tmp = tmp_path_factory.mktemp("fc-shared")
    with fake_firecracker(fake_bin, tmp).boot(VmSpec(image=fake_image, run_dir=tmp / "vms",
                                                     boot_timeout=30)) as vm:
        yield vm


@pytest.mark.parametrize("check", conformance.vm_params(FAKE_CAPABILITIES))
def test_conformance_on_the_fake(shared_vm: Vm, check: conformance.VmCheck, tmp_path: Path) -> None:
    check(shared_vm, tmp_path)


@pytest.mark.parametrize("check", conformance.backend_params(FAKE_CAPABILITIES))
def test_backend_conformance_on_the_fake(hypervisor: FirecrackerHypervisor, spec: VmSpec,
                                         check: conformance.BackendCheck) -> None:
    check(hypervisor, spec)


def _requests(journal_path: Path, since: int) -> list[str]:
    return [entry["request"] for entry in read_journal(journal_path)[since:] if "request" in entry]


def test_boot_sends_the_documented_configuration_then_instance_start(
        hypervisor: FirecrackerHypervisor, fake_disk_image: ImageFiles, tmp_path: Path, journal_path: Path) -> None:
    since = len(read_journal(journal_path))
    spec = VmSpec(image=fake_disk_image, run_dir=tmp_path / "vms", vcpus=2, memory_mib=512, boot_timeout=30)
    with hypervisor.boot(spec) as vm:
        assert vm.exec(ExecRequest(script="exit 7")).exit_code == 7
        assert (vm.files_dir / "rootfs.ext4").stat().st_blocks == 0, "the private disk copy is not sparse"
    entries = [e for e in read_journal(journal_path)[since:] if "request" in e]
    assert [e["request"] for e in entries] == [
        "PUT /machine-config", "PUT /boot-source", "PUT /drives/root", "PUT /vsock", "PUT /actions"]
    bodies = {e["request"]: e["body"] for e in entries}
    assert bodies["PUT /machine-config"] == {"vcpu_count": 2, "mem_size_mib": 512}
    assert "lg.agent=vsock:1024" in bodies["PUT /boot-source"]["boot_args"].split()
    assert bodies["PUT /actions"] == {"action_type": "InstanceStart"}


def test_snapshot_is_paused_then_created_and_loaded_in_a_fresh_process_with_a_vsock_override(
        hypervisor: FirecrackerHypervisor, spec: VmSpec, tmp_path: Path, journal_path: Path) -> None:
    assert isinstance(hypervisor, SnapshotBackend)
    snapshot = tmp_path / "snap"
    with hypervisor.boot(spec) as vm:
        assert vm.exec(ExecRequest(script="echo kept > /tmp/kept")).ok
        since = len(read_journal(journal_path))
        hypervisor.save_snapshot(vm, snapshot)
        assert _requests(journal_path, since) == ["PATCH /vm", "PUT /snapshot/create"]
    since = len(read_journal(journal_path))
    with hypervisor.restore(snapshot, spec) as clone:
        out = bytearray()
        assert clone.exec(ExecRequest(script="cat /tmp/kept"), lambda _s, c: out.extend(c)).ok
        assert bytes(out) == b"kept\n"
    load = [e for e in read_journal(journal_path)[since:] if e.get("request") == "PUT /snapshot/load"]
    assert _requests(journal_path, since)[0] == "PUT /snapshot/load", "the load must be the fresh process's first"
    assert load[0]["body"]["vsock_override"] == {"uds_path": "vsock.sock"} and load[0]["body"]["resume_vm"] is True


def test_the_fake_refuses_what_the_document_refuses(fake_bin: dict[str, Path], tmp_path: Path,
                                                    journal_path: Path) -> None:
    """The tester tested: a load after configuring, a snapshot of a running VM, an unknown field, a bad type,
    a path outside the contract each get 400 with Firecracker's error body, and are journalled as violations."""
    import subprocess

    api_sock = tmp_path / "api.sock"
    process = subprocess.Popen([str(fake_bin["firecracker"]), "--api-sock", str(api_sock)], cwd=tmp_path)
    try:
        api = ApiClient(api_sock, fault=lambda r: r.body["fault_message"])
        api.wait_listening(__import__("time").monotonic() + 20, lambda: None)
        since = len(read_journal(journal_path))
        api.call("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
        cases = [
            ("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_file_path": "m"}, "fresh process"),
            ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "colour": "red"}, "'colour'"),
            ("PUT", "/machine-config", {"vcpu_count": 64, "mem_size_mib": 128}, "maximum"),
            ("PUT", "/vsock", {"guest_cid": "3", "uds_path": "v.sock"}, "type integer"),
            ("PUT", "/vsock", {"uds_path": "v.sock"}, "'guest_cid' missing"),
            ("PATCH", "/vm", {"state": "Paused"}, "post-boot only"),
            ("PUT", "/actions", {"action_type": "InstanceStart"}, "no kernel"),
            ("DELETE", "/vm", None, "not an operation"),
        ]
        for method, path, body, why in cases:
            with pytest.raises(ApiError, match=why) as refused:
                api.call(method, path, body)
            assert refused.value.status == 400
        journalled = read_journal(journal_path)[since:]
        assert sum(1 for e in journalled if e.get("violations")) == len(cases)
    finally:
        process.terminate()
        process.wait(timeout=10)
    # These were the fake's own test: clear them, or the autouse check would fail this test.
    kept = journal_path.read_text().splitlines()[:since]
    journal_path.write_text("".join(line + "\n" for line in kept))


def test_jailed_vm_runs_under_the_jailer_s_layout_and_leaves_nothing(
        fake_bin: dict[str, Path], spec: VmSpec, tmp_path: Path, journal_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    hypervisor = fake_firecracker(fake_bin, tmp_path, jailer=True)
    since = len(read_journal(journal_path))
    with hypervisor.boot(spec) as vm:
        assert isinstance(vm, FirecrackerVm) and vm.jail is not None
        assert vm.files_dir == vm.run_dir / "jail" / "firecracker" / vm.id / "root"
        assert vm.vmm_pid() is not None and vm.vmm_pid() != (vm.process.pid if vm.process else None)
        assert vm.exec(ExecRequest(script="exit 0")).ok
        confinement = vm.host_confinement
        assert confinement["jailer"] == "firecracker jailer" and confinement["pid_namespace"] is True
        pid = vm.vmm_pid()
    jail = next(e["jail"] for e in read_journal(journal_path)[since:] if "jail" in e)
    assert jail["cgroup_version"] == "2" and jail["new_pid_ns"] and jail["uid"] == confinement["uid"] >= 900_000
    assert f"memory.max={(spec.memory_mib + 128) << 20}" in jail["cgroups"]
    assert not vm.run_dir.exists()
    assert (pid is not None and not Path(f"/proc/{pid}").exists()) or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_restore_refuses_a_snapshot_of_another_image(hypervisor: FirecrackerHypervisor, spec: VmSpec,
                                                     fake_disk_image: ImageFiles, tmp_path: Path) -> None:
    snapshot = tmp_path / "snap"
    with hypervisor.boot(spec) as vm:
        hypervisor.save_snapshot(vm, snapshot)
    meta = json.loads((snapshot / "snapshot.json").read_text())
    assert meta["backend"] == "firecracker" and meta["api"] == "1.16.1"
    other = VmSpec(image=fake_disk_image, run_dir=spec.run_dir)
    with pytest.raises(BootFailed, match="taken from image"):
        hypervisor.restore(snapshot, other)


def test_what_firecracker_cannot_do_is_refused_before_it_starts(hypervisor: FirecrackerHypervisor,
                                                               spec: VmSpec) -> None:
    from dataclasses import replace

    from lg.vm.api import EgressRule, NetworkSpec

    with pytest.raises(EnvironmentUnfit, match="KVM only"):
        hypervisor.boot(replace(spec, accelerator="tcg"))
    with pytest.raises(EnvironmentUnfit, match="QEMU backend only"):
        hypervisor.boot(replace(spec, network=NetworkSpec(allow=(EgressRule("10.0.0.1/32"),))))


def test_probe_without_the_binary_is_fatal_and_says_how_to_install(tmp_path: Path) -> None:
    probe = FirecrackerHypervisor(state_dir=tmp_path, binary="no-such-firecracker",
                                  jailer_binary="no-such-jailer").probe()
    assert not probe.can_run
    fatal = [p for p in probe.problems if p.fatal]
    assert fatal and "not installed" in fatal[0].message and "firecracker/releases" in (fatal[0].fix or "")


def test_probe_with_the_binary_reports_its_version(fake_bin: dict[str, Path], tmp_path: Path) -> None:
    probe = fake_firecracker(fake_bin, tmp_path).probe()
    assert probe.version == "1.16.1" and probe.binary == fake_bin["firecracker"]
