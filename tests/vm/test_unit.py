"""The VM layer without booting anything: command lines, accelerator plans, transports, validation."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from lg.errors import EnvironmentUnfit
from lg.guest.protocol import encode_message
from lg.vm import cmdline, host, qemu, qemu_argv, qemu_vm, vmm_cgroup
from lg.vm.agent_client import AgentClient
from lg.vm.api import AgentUnresponsive, ExecRequest, VmSpec
from lg.vm.base import file_change
from lg.vm.channel import ChannelError, HybridVsockConnector, UnixSocketConnector, connect_unix
from lg.vm.rundir import create_run_dir, read_owner, reap_leftovers, write_owner
from tests.vm.conftest import ImageFiles

IMAGE = ImageFiles("tiny", "sha256:x", Path("/k/vmlinux"), Path("/k/initrd"), None, ("console=ttyS0", "quiet"))


# --- command line --------------------------------------------------------------------------------------


def test_kernel_cmdline_adds_tsc_panic_and_hostname() -> None:
    line = cmdline.kernel_cmdline(IMAGE, "step build/1", 2600000)
    assert line.split() == [
        "console=ttyS0", "quiet", "panic=-1", "tsc_early_khz=2600000", "tsc=reliable", "init_on_free=1",
        "lg.hostname=step-build-1",
    ]
    assert "tsc_early_khz" not in cmdline.kernel_cmdline(IMAGE, "x", None)


def test_qemu_argv_is_a_confined_microvm() -> None:
    spec = VmSpec(image=IMAGE, vcpus=2, memory_mib=512)
    argv = qemu_argv.qemu_argv("/usr/bin/qemu-system-x86_64", spec, "tcg", "console=ttyS0", overlay=False)
    joined = " ".join(argv)
    assert argv[argv.index("-M") + 1].startswith("microvm,")
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-sandbox") + 1] == qemu_argv.SANDBOX
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert "name=lg.agent" in joined and "-drive" not in argv
    assert (argv[argv.index("-m") + 1], argv[argv.index("-smp") + 1]) == ("512", "2")


def test_qemu_argv_attaches_the_rootfs_through_an_overlay() -> None:
    with_disk = ImageFiles("default", "d", IMAGE.kernel, IMAGE.initrd, Path("/k/root.ext4"), IMAGE.kernel_args)
    spec = VmSpec(image=with_disk)
    overlay = qemu_argv.qemu_argv("qemu", spec, "kvm", "", overlay=True)
    assert overlay[overlay.index("-drive") + 1].startswith(f"id=root,file={qemu_argv.OVERLAY},format=qcow2")
    fallback = qemu_argv.qemu_argv("qemu", spec, "kvm", "", overlay=False)
    assert "snapshot=on" in fallback[fallback.index("-drive") + 1]


def test_overlay_never_writes_the_base(tmp_path: Path) -> None:
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img not installed")
    base = tmp_path / "base.ext4"
    base.write_bytes(b"\0" * (1 << 20))
    assert qemu_argv.create_overlay(tmp_path, base)
    info = subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / qemu_argv.OVERLAY)],
                          capture_output=True, text=True, check=True)
    assert json.loads(info.stdout)["backing-filename"] == str(base)


def test_guest_panic_reason_is_found_in_the_console() -> None:
    console = "[ 1.0] ok\n[ 5.7] Kernel panic - not syncing: sysrq triggered crash\n[ 5.8] CPU: 0 PID: 1\n"
    assert qemu_vm.guest_panic(console) == "sysrq triggered crash"
    assert qemu_vm.guest_panic("[ 1.0] all fine\n") is None


# --- accelerator choice --------------------------------------------------------------------------------


@pytest.fixture
def hv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> qemu.QemuHypervisor:
    hypervisor = qemu.QemuHypervisor(state_dir=tmp_path)
    monkeypatch.setattr(hypervisor, "fingerprint", lambda: "host-a")
    return hypervisor


def plan(hv: qemu.QemuHypervisor, choice: str) -> list[tuple[str, bool]]:
    return [(a.accelerator, a.records_verdict) for a in hv._plan(VmSpec(image=IMAGE, accelerator=choice))]


def test_auto_without_kvm_device_is_tcg(hv: qemu.QemuHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "kvm_device_status", lambda: (False, "no /dev/kvm"))
    assert plan(hv, "auto") == [("tcg", False)]
    with pytest.raises(EnvironmentUnfit, match="no /dev/kvm"):
        plan(hv, "kvm")


def test_auto_probes_kvm_once_then_follows_the_verdict(
    hv: qemu.QemuHypervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "kvm_device_status", lambda: (True, "ok"))
    assert plan(hv, "auto") == [("kvm", True), ("tcg", False)]
    assert hv._plan(VmSpec(image=IMAGE))[0].timeout == qemu.KVM_PROBE_SECONDS
    hv._record(False, None)
    assert plan(hv, "auto") == [("tcg", False)]
    hv._record(True, None)
    assert plan(hv, "auto") == [("kvm", True), ("tcg", False)]
    assert plan(hv, "tcg") == [("tcg", False)]
    assert plan(hv, "kvm") == [("kvm", False)]


def test_verdict_is_ignored_on_another_host(hv: qemu.QemuHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    hv._record(False, None)
    assert qemu.load_verdict(hv.verdict_path, "host-a") is not None
    assert qemu.load_verdict(hv.verdict_path, "host-b") is None
    hv.verdict_path.write_text("{not json")
    assert qemu.load_verdict(hv.verdict_path, "host-a") is None


def test_unknown_accelerator_is_refused(hv: qemu.QemuHypervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "kvm_device_status", lambda: (True, "ok"))
    with pytest.raises(EnvironmentUnfit, match="unknown accelerator"):
        plan(hv, "hvf")


def test_probe_without_qemu_says_how_to_install(tmp_path: Path) -> None:
    probe = qemu.QemuHypervisor(state_dir=tmp_path, binary="qemu-system-nonexistent").probe()
    assert probe.binary is None and probe.auto_accelerator is None and not probe.can_run
    assert any("apt-get install qemu-system-x86" in (p.fix or "") for p in probe.problems)
    with pytest.raises(EnvironmentUnfit, match="not installed"):
        qemu.QemuHypervisor(state_dir=tmp_path, binary="qemu-system-nonexistent").boot(VmSpec(image=IMAGE))


# --- host facts ----------------------------------------------------------------------------------------


def test_tsc_khz_from_sysfs_or_cpuinfo(tmp_path: Path) -> None:
    cpuinfo, sysfs = tmp_path / "cpuinfo", tmp_path / "tsc_freq_khz"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2299.998\n")
    assert host.tsc_khz(cpuinfo, sysfs) == 2299998
    sysfs.write_text("2300000\n")
    assert host.tsc_khz(cpuinfo, sysfs) == 2300000
    sysfs.unlink()
    cpuinfo.write_text("nothing here\n")
    assert host.tsc_khz(cpuinfo, sysfs) is None
    assert host.tsc_khz() is None or host.tsc_khz() > 100_000  # this host: a plausible rate


def test_kvm_device_status_explains_a_missing_device(tmp_path: Path) -> None:
    present, reason = host.kvm_device_status(tmp_path / "kvm")
    assert not present and "does not exist" in reason


def test_die_with_parent_kills_the_child_when_the_parent_dies(tmp_path: Path) -> None:
    """A parent that dies by SIGKILL takes its child along (what keeps qemu from being orphaned)."""
    code = (
        "import subprocess, sys, os\n"
        "from lg.vm.host import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '300'], preexec_fn=die_with_parent(os.getpid()))\n"
        "print(child.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=False)
    child = int(done.stdout.split()[0])
    deadline = time.monotonic() + 5
    while host.process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not host.process_alive(child)


# --- run directories -----------------------------------------------------------------------------------


def test_reaper_removes_dirs_of_dead_owners_only(tmp_path: Path) -> None:
    mine = create_run_dir(tmp_path, "vm-mine")
    write_owner(mine, vmm_pid=os.getpid(), backend="qemu")
    assert read_owner(mine) is not None
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    victim = subprocess.Popen(["sleep", "300"])
    theirs = create_run_dir(tmp_path, "vm-theirs")
    (theirs / "owner.json").write_text(json.dumps({
        "lg_pid": dead_owner.pid, "lg_started": None, "vmm_pid": victim.pid,
        "vmm_started": host.process_start_time(victim.pid), "backend": "qemu",
    }))
    assert reap_leftovers(tmp_path) == ["vm-theirs"]
    assert victim.wait(timeout=5) == -9
    assert mine.exists() and not theirs.exists()


# --- transports and the agent client -------------------------------------------------------------------


def test_connect_unix_handles_paths_longer_than_sun_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(deep)
    server.bind("agent.sock")
    server.listen(1)
    client = connect_unix(path)
    server.accept()[0].close()
    client.close()
    server.close()


def test_unix_connector_gives_up_after_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(ChannelError):
        UnixSocketConnector(tmp_path / "never.sock").connect(timeout=0.2)


def _serve_once(path: Path, reply: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        assert conn.recv(64) == b"CONNECT 1024\n"
        conn.sendall(reply)
        time.sleep(0.2)
        conn.close()
        server.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_hybrid_vsock_handshake_keeps_the_first_agent_bytes(tmp_path: Path) -> None:
    banner = encode_message({"id": None, "type": "ready"})
    thread = _serve_once(tmp_path / "v.sock", b"OK 1073741824\n" + banner)
    sock = HybridVsockConnector(tmp_path / "v.sock", 1024).connect(timeout=5)
    sock.settimeout(5)
    assert sock.recv(len(banner)) == banner
    sock.close()
    thread.join()


def test_hybrid_vsock_refusal_is_an_error(tmp_path: Path) -> None:
    thread = _serve_once(tmp_path / "v.sock", b"FAILURE\n")
    with pytest.raises(ChannelError, match="instead of OK"):
        HybridVsockConnector(tmp_path / "v.sock", 1024).connect(timeout=5)
    thread.join()


def test_a_silent_agent_is_reported_after_the_deadline() -> None:
    host_end, guest_end = socket.socketpair()
    started = time.monotonic()
    with pytest.raises(AgentUnresponsive, match="did not answer within 1s"):
        AgentClient(host_end).hello(timeout=1.0, resend_every=0.3)
    assert time.monotonic() - started < 3
    host_end.close()
    guest_end.close()


def test_an_agent_speaking_garbage_is_reported() -> None:
    host_end, guest_end = socket.socketpair()
    guest_end.sendall(b"\x00\x00\x00\x05\x01{bad}")
    with pytest.raises(AgentUnresponsive, match="malformed frame"):
        AgentClient(host_end).hello(timeout=5)
    guest_end.sendall(b"")
    host_end.close()
    guest_end.close()


def test_an_oversized_frame_from_the_guest_ends_the_session() -> None:
    host_end, guest_end = socket.socketpair()
    guest_end.sendall(b"\x10\x00\x00\x00\x01")
    with pytest.raises(AgentUnresponsive, match="malformed frame"):
        AgentClient(host_end).hello(timeout=5)
    host_end.close()
    guest_end.close()


def test_a_closed_channel_asks_the_backend_first() -> None:
    host_end, guest_end = socket.socketpair()
    guest_end.close()
    asked = []
    with pytest.raises(AgentUnresponsive, match=r"closed its channel|cannot write"):
        AgentClient(host_end, lost=lambda: asked.append(True)).hello(timeout=5)
    assert asked == [True]
    host_end.close()


# --- validation of what the guest says -----------------------------------------------------------------


GOOD = {"path": "a/b.txt", "kind": "created", "size": 3, "sha256": "a" * 64, "mode": 0o644,
        "old_mode": None, "symlink_target": None}


def test_valid_change_record() -> None:
    change = file_change(GOOD)
    assert (change.path, change.kind, change.size, change.mode) == ("a/b.txt", "created", 3, 0o644)


@pytest.mark.parametrize(
    "bad",
    [{"path": "../x"}, {"path": "/etc/passwd"}, {"path": "a//b"}, {"kind": "renamed"}, {"size": -1},
     {"size": True}, {"sha256": "xyz"}, {"mode": 0o77777}, {"symlink_target": 5}],
)
def test_invalid_change_records_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(AgentUnresponsive, match="invalid change record"):
        file_change({**GOOD, **bad})


def test_exec_request_validates_and_redacts() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ExecRequest()
    with pytest.raises(ValueError, match="exactly one"):
        ExecRequest(argv=("a",), script="b")
    with pytest.raises(ValueError, match="positive"):
        ExecRequest(argv=("a",), timeout=0)
    shown = repr(ExecRequest(script="deploy", env={"TOKEN": "s3cret"}, stdin=b"password"))
    assert "s3cret" not in shown and "password" not in shown and "TOKEN" in shown


class _FakeVm:
    def __init__(self, accelerator: str) -> None:
        self.accelerator = accelerator

    def destroy(self) -> None:
        pass


@pytest.mark.parametrize(
    ("tcg_boots", "expected_verdict", "raises"),
    [(True, False, False), (False, None, True)],
    ids=["kvm-blamed-when-tcg-boots", "nothing-recorded-when-the-image-is-broken"],
)
def test_auto_fallback_records_a_verdict_only_when_tcg_proves_the_image(
    hv: qemu.QemuHypervisor, monkeypatch: pytest.MonkeyPatch, tcg_boots: bool,
    expected_verdict: bool | None, raises: bool,
) -> None:
    from lg.vm.api import BootFailed

    monkeypatch.setattr(host, "kvm_device_status", lambda: (True, "ok"))
    monkeypatch.setattr(qemu.QemuHypervisor, "binary_path", lambda self: Path("/usr/bin/qemu"))
    tried = []

    def boot_once(spec: VmSpec, attempt: qemu._Attempt) -> _FakeVm:
        tried.append(attempt.accelerator)
        if attempt.accelerator == "kvm" or not tcg_boots:
            raise BootFailed(f"no boot under {attempt.accelerator}")
        return _FakeVm(attempt.accelerator)

    monkeypatch.setattr(hv, "_boot_once", boot_once)
    if raises:
        with pytest.raises(BootFailed, match="under tcg"):
            hv.boot(VmSpec(image=IMAGE, run_dir=hv.state_dir / "vms"))
    else:
        assert hv.boot(VmSpec(image=IMAGE, run_dir=hv.state_dir / "vms")).accelerator == "tcg"
    assert tried == ["kvm", "tcg"]
    verdict = qemu.load_verdict(hv.verdict_path, "host-a")
    assert (verdict.usable if verdict else None) == expected_verdict


def test_reaping_leaves_a_fresh_empty_vmm_cgroup_alone() -> None:
    """A VMM's cgroup is empty between its creation and the write of the VMM's pid: a concurrent reap (every
    boot and restore reaps) must not remove it then. Old empty ones, left by a dead lg, do go."""
    if os.geteuid() != 0 or vmm_cgroup.self_check() is not None:
        pytest.skip("needs root and writable cgroups")
    parents = vmm_cgroup._parents()
    created = []
    try:
        for parent in parents:
            parent.mkdir(parents=True, exist_ok=True)
            (parent / "vm-reaptest").mkdir()
            created.append(parent / "vm-reaptest")
        assert "vm-reaptest" not in vmm_cgroup.reap() and all(path.exists() for path in created)
        for path in created:
            old = time.time() - 2 * vmm_cgroup.REAP_AFTER_SECONDS
            os.utime(path, (old, old))
        assert "vm-reaptest" in vmm_cgroup.reap() and not any(path.exists() for path in created)
    finally:
        for path in created:
            if path.exists():
                path.rmdir()
