"""The QEMU backend against real microVMs: the conformance suite, crashes, and no orphans on any exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lg.testing import conformance
from lg.vm.api import BootFailed, ExecRequest, GuestCrashed, Vm, VmSpec
from lg.vm.host import process_alive
from lg.vm.qemu import QemuHypervisor
from lg.vm.qemu_vm import QemuVm
from lg.vm.rundir import reap_leftovers
from tests.vm.conftest import REPO, ImageFiles, accelerator

pytestmark = pytest.mark.vm


CAPABILITIES = conformance.ALL  # QEMU is held to every check


@pytest.mark.parametrize("check", conformance.vm_params(CAPABILITIES))
def test_conformance(shared_vm: Vm, check: conformance.VmCheck, tmp_path: Path) -> None:
    check(shared_vm, tmp_path)


@pytest.mark.parametrize("check", conformance.backend_params(CAPABILITIES))
def test_backend_conformance(hypervisor: QemuHypervisor, spec: VmSpec, check: conformance.BackendCheck) -> None:
    check(hypervisor, spec)


def test_guest_panic_reports_the_console(hypervisor: QemuHypervisor, spec: VmSpec) -> None:
    with hypervisor.boot(spec) as vm:
        assert isinstance(vm, QemuVm)
        with pytest.raises(GuestCrashed) as crashed:
            vm.exec(ExecRequest(script="echo c > /proc/sysrq-trigger; sleep 60"))
        assert "qemu exited" in crashed.value.message
        assert "guest kernel panic (sysrq triggered crash)" in crashed.value.message
        assert crashed.value.console.strip()
        assert "last console lines" in str(crashed.value)
    assert not process_alive(vm.pid or 0)


def test_a_guest_that_cannot_boot_fails_with_its_console(
    hypervisor: QemuHypervisor, image: ImageFiles, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(os.urandom(4096))
    broken = ImageFiles("broken", "x", image.kernel, garbage, None, image.kernel_args)
    started = time.monotonic()
    with pytest.raises(BootFailed) as failed:
        hypervisor.boot(VmSpec(image=broken, accelerator="tcg", run_dir=tmp_path / "vms", boot_timeout=60))
    assert time.monotonic() - started < 60
    assert "guest kernel panic" in failed.value.message and failed.value.console.strip()
    assert list((tmp_path / "vms").iterdir()) == []


def test_a_missing_kernel_fails_at_once_with_qemus_reason(
    hypervisor: QemuHypervisor, image: ImageFiles, tmp_path: Path
) -> None:
    broken = ImageFiles("broken", "x", tmp_path / "no-kernel", image.initrd, None, image.kernel_args)
    with pytest.raises(BootFailed, match="no-kernel"):
        hypervisor.boot(VmSpec(image=broken, accelerator="tcg", run_dir=tmp_path / "vms"))
    assert list((tmp_path / "vms").iterdir()) == []


def _start_helper(image: ImageFiles, run_dir: Path, mode: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    helper = subprocess.Popen(
        [sys.executable, "-m", "tests.vm.boot_helper", image.to_json(), str(run_dir), accelerator(), mode],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert helper.stdout is not None
    line = helper.stdout.readline()
    if not line:
        helper.wait()
        pytest.fail(f"the helper did not boot a VM: {helper.stderr.read() if helper.stderr else ''}")
    return helper, json.loads(line)


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_kill_9_of_lg_leaves_no_qemu(image: ImageFiles, tmp_path: Path) -> None:
    helper, booted = _start_helper(image, tmp_path / "vms", "sleep")
    qemu_pid = int(booted["pid"])
    assert process_alive(qemu_pid)
    helper.send_signal(signal.SIGKILL)
    helper.wait()
    assert _gone(qemu_pid, within=5), "qemu outlived its lg process"
    # The run directory is left behind by a killed process; the next lg reaps it.
    assert Path(booted["run_dir"]).exists()
    assert reap_leftovers(tmp_path / "vms") == [Path(booted["run_dir"]).name]
    assert list((tmp_path / "vms").iterdir()) == []


@pytest.mark.parametrize("mode", ["sleep", "exec"])
def test_ctrl_c_of_lg_leaves_nothing(image: ImageFiles, tmp_path: Path, mode: str) -> None:
    helper, booted = _start_helper(image, tmp_path / "vms", mode)
    time.sleep(0.5)
    helper.send_signal(signal.SIGINT)
    helper.wait(timeout=30)
    stderr = helper.stderr.read() if helper.stderr else ""
    assert "KeyboardInterrupt" in stderr
    assert _gone(int(booted["pid"]), within=5)
    assert not Path(booted["run_dir"]).exists()


def test_snapshot_restores_independent_clones(hypervisor: QemuHypervisor, spec: VmSpec, tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot"
    with hypervisor.boot(spec) as vm:
        assert conformance.run(vm, "echo before > /tmp/marker")[0] == 0
        hypervisor.save_snapshot(vm, snapshot)
        cold = vm.boot_seconds
    assert {p.name for p in snapshot.iterdir()} >= {"memory.state", "snapshot.json"}
    with hypervisor.restore(snapshot, spec) as first, hypervisor.restore(snapshot, spec) as second:
        assert first.boot_seconds < cold and first.accelerator == vm.accelerator
        assert conformance.run(first, "cat /tmp/marker")[1] == b"before\n"
        conformance.run(first, "echo first > /tmp/marker")
        assert conformance.run(second, "cat /tmp/marker")[1] == b"before\n"
        uuids = [conformance.run(clone, "cat /proc/sys/kernel/random/uuid")[1] for clone in (first, second)]
        assert uuids[0] != uuids[1]
        guest_time = int(conformance.run(second, "date +%s")[1])
        assert abs(guest_time - time.time()) < 10
    assert list(spec.run_dir.iterdir()) == []  # type: ignore[union-attr]
