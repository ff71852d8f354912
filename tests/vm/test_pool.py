"""The warm pool with real VMs: leases are fresh VMs, never served twice; restored clones are distinct; broken
templates fall back to cold boots; the daemon leaves nothing running when it is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from lg.model import PoolSettings
from lg.pool.key import key_for, profile_digest
from lg.pool.pool import REFILL_NICE, PoolExhausted, WarmPool
from lg.pool.templates import MANIFEST, TemplateStore, file_digest
from lg.vm.api import ExecRequest, VmSpec
from lg.vm.qemu import QemuHypervisor
from tests.vm.conftest import STATE_DIR, ImageFiles, accelerator

pytestmark = pytest.mark.vm

PROBE = "hostname; cat /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo"


@pytest.fixture(scope="module")
def template_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("templates")


@pytest.fixture
def pool_spec(image: ImageFiles, tmp_path: Path) -> VmSpec:
    return VmSpec(image=image, accelerator=accelerator(), run_dir=tmp_path / "vms", hostname="lg-test-step")


def make_pool(template_root: Path | None, **settings: float) -> WarmPool:
    return WarmPool(lambda name: QemuHypervisor(state_dir=STATE_DIR), PoolSettings(**settings),  # type: ignore[arg-type]
                    template_root)


def probe(lease_vm: object) -> tuple[str, str, str]:
    output: list[bytes] = []
    result = lease_vm.exec(ExecRequest(script=PROBE, timeout=30),  # type: ignore[attr-defined]
                           on_output=lambda stream, chunk: output.append(chunk))
    assert result.ok
    hostname, machine_id, random = b"".join(output).decode().split()
    return hostname, machine_id, random


def qemu_pids_under(directory: Path) -> list[int]:
    """QEMU processes whose run directory is under `directory` (they run with it as their cwd)."""
    found = []
    for process in psutil.process_iter(["name", "cwd"]):
        if (process.info["name"] or "").startswith("qemu") and str(process.info["cwd"] or "").startswith(
                str(directory)):
            found.append(process.pid)
    return found


def test_leases_are_fresh_distinct_vms_never_served_twice(template_root: Path, pool_spec: VmSpec) -> None:
    key = key_for("qemu", pool_spec, profile_digest({}))
    with make_pool(template_root, max_idle=3, max_active=3, lease_timeout=60) as pool:
        pool.expect(key, pool_spec, 3)
        leases = [pool.lease(key, pool_spec) for _ in range(3)]
        seen = [probe(lease.vm) for lease in leases]
        ids = {lease.vm.id for lease in leases}
        assert len(ids) == 3 and all(lease.source in ("warm", "restored") for lease in leases)
        assert {s[0] for s in seen} == {"lg-test-step"}  # the step's hostname, set at lease time
        assert len({s[1] for s in seen}) == 3 and len({s[2] for s in seen}) == 3  # machine ids, RNG output
        with pytest.raises(PoolExhausted, match="max_active"):
            pool.lease(key, pool_spec, timeout=0.5)  # all three are leased: backpressure, with a deadline
        pids = [lease.vm.pid for lease in leases]  # type: ignore[attr-defined]
        for lease in leases:
            lease.release()
        again = pool.lease(key, pool_spec, timeout=60)
        assert again.vm.id not in ids  # a released VM is destroyed, never served again
        again.release()
        status = pool.status()
    deadline = time.monotonic() + 30
    while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
        assert time.monotonic() < deadline, "released VMs were not destroyed"
        time.sleep(0.1)
    metrics = status["metrics"]
    assert metrics["leases"].get("cold", 0) == 0 and metrics["spawn_seconds"]["restore"]["count"] >= 4
    assert not qemu_pids_under(pool_spec.run_dir or Path("/nonexistent"))  # close() took the idle ones too


def scheduling(pid: int) -> tuple[set[int], int]:
    """The nice values of a process's threads, and of its scheduler autogroup (its session)."""
    threads = {os.getpriority(os.PRIO_PROCESS, int(task.name)) for task in Path(f"/proc/{pid}/task").iterdir()}
    return threads, int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


def test_idle_vms_wait_niced_and_tickless_and_a_lease_restores_their_priority(template_root: Path,
                                                                              pool_spec: VmSpec) -> None:
    """An idle VM must not take CPU from the step running now: its VMM is niced (threads and session, since
    the scheduler shares the CPU between sessions first), and its guest kernel stops its tick when idle."""
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel has no scheduler autogroups")
    key = key_for("qemu", pool_spec, profile_digest({}))
    with make_pool(template_root, max_idle=1, max_active=2, lease_timeout=60) as pool:
        pool.expect(key, pool_spec, 1)
        deadline = time.monotonic() + 120
        while pool.status()["idle"] < 1:
            assert time.monotonic() < deadline, f"the pool did not fill: {pool.status()}"
            time.sleep(0.1)
        with pool._cond:
            idle_pid = pool._idle[key][0].vm.pid  # type: ignore[attr-defined]
        assert scheduling(idle_pid) == ({REFILL_NICE}, REFILL_NICE)
        with pool.lease(key, pool_spec) as lease:
            assert lease.vm.pid == idle_pid  # type: ignore[attr-defined]
            assert scheduling(idle_pid) == ({0}, 0)
            output: list[bytes] = []
            lease.vm.exec(ExecRequest(argv=("/bin/cat", "/proc/timer_list"), timeout=30),
                          on_output=lambda stream, chunk: output.append(chunk))
            modes = [line.split(":")[1].strip() for line in b"".join(output).decode().splitlines()
                     if line.strip().startswith(".nohz_mode")]
            assert modes and all(mode != "0" for mode in modes), modes  # 0 would be a periodic tick


def test_a_corrupt_template_falls_back_to_a_cold_boot_and_is_rebuilt(template_root: Path, pool_spec: VmSpec) -> None:
    store = TemplateStore(template_root, QemuHypervisor(state_dir=STATE_DIR))
    template, _ = store.ensure(pool_spec)
    ram = template.path / "state" / "ram"
    ram.chmod(0o644)
    with ram.open("r+b") as handle:  # flip bytes in the saved guest RAM
        handle.seek(os.lseek(handle.fileno(), 0, os.SEEK_DATA) + 8192)
        handle.write(b"\xff" * 4096)
    key = key_for("qemu", pool_spec, profile_digest({}))
    with make_pool(template_root, max_idle=0, max_active=2) as pool:
        lease = pool.lease(key, pool_spec, timeout=60)
        assert lease.source == "cold" and "does not match its manifest" in (lease.note or "")
        assert probe(lease.vm)[0] == "lg-test-step"  # the cold VM works
        lease.release()
        assert not template.path.exists()  # the corrupt template is gone, never restored
        rebuilt = pool.lease(key, pool_spec, timeout=60)
        assert rebuilt.source == "restored"  # the next lease rebuilt it and restored from it
        rebuilt.release()


def test_a_template_that_fails_to_restore_is_removed_and_the_lease_boots_cold(template_root: Path,
                                                                               pool_spec: VmSpec) -> None:
    store = TemplateStore(template_root, QemuHypervisor(state_dir=STATE_DIR))
    template, _ = store.ensure(pool_spec)
    memory = template.path / "state" / "memory.state"
    memory.write_bytes(memory.read_bytes()[: memory.stat().st_size // 3])  # truncated, manifest updated to match
    manifest = json.loads((template.path / MANIFEST).read_text())
    manifest["files"]["state/memory.state"] = {"size": memory.stat().st_size, "sha256": file_digest(memory)}
    (template.path / MANIFEST).write_text(json.dumps(manifest))
    key = key_for("qemu", pool_spec, profile_digest({}))
    with make_pool(template_root, max_idle=0, max_active=2) as pool:
        lease = pool.lease(key, pool_spec, timeout=60)
        assert lease.source == "cold" and "failed" in (lease.note or "") and "template removed" in (lease.note or "")
        lease.release()
        assert pool.status()["metrics"]["failures"]["restore"] == 1
    assert not template.path.exists()


def test_a_full_disk_while_saving_leaves_no_template_and_the_lease_boots_cold(tmp_path: Path,
                                                                               pool_spec: VmSpec) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(full)], check=True)
    try:
        key = key_for("qemu", pool_spec, profile_digest({}))
        with make_pool(full, max_idle=0, max_active=1) as pool:
            lease = pool.lease(key, pool_spec, timeout=60)
            assert lease.source == "cold" and "not enough free disk space" in (lease.note or "")
            lease.release()
        assert [p.name for p in full.iterdir() if not p.name.startswith(".lock")] == []  # nothing half-written
    finally:
        subprocess.run(["umount", str(full)], check=False)


@pytest.fixture
def daemon(tmp_path: Path, image: ImageFiles) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """`lg pool serve` in a project of its own (tiny image), on a socket of its own."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "lg.yaml").write_text(f"image: tiny\nstate_dir: .lg\naccelerator: {accelerator()}\n"
                                     "pool: {max_idle: 1, max_active: 2}\n")
    socket_path = tmp_path / "sock" / "pool.sock"
    env = {**os.environ, "LG_POOL_SOCKET": str(socket_path)}
    process = subprocess.Popen([sys.executable, "-m", "lg", "pool", "serve"], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None and "serving" in process.stdout.readline()
    yield process, socket_path, project
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=60)


def test_the_daemon_serves_leases_and_leaves_nothing_when_killed(daemon: tuple[subprocess.Popen[str], Path, Path],
                                                                 pool_spec: VmSpec) -> None:
    from lg.config.project import load_project_config
    from lg.pool import client
    from lg.vm.api import GuestCrashed

    process, socket_path, project = daemon
    assert (socket_path.stat().st_mode & 0o777, socket_path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    remote = client.connect(load_project_config(project), socket_path)
    assert remote is not None
    key = key_for("qemu", pool_spec, profile_digest({}))
    lease = remote.lease(key, pool_spec, timeout=120)
    assert probe(lease.vm)[0] == "lg-test-step"  # this process talks to the daemon's VM directly
    assert lease.vm.channel_passed  # type: ignore[attr-defined] # over the daemon's connection, handed over
    vm_pid = lease.vm.pid  # type: ignore[attr-defined]
    assert psutil.Process(vm_pid).ppid() == process.pid

    process.send_signal(signal.SIGKILL)  # the daemon dies with a VM leased
    process.wait(timeout=30)
    deadline = time.monotonic() + 15
    while psutil.pid_exists(vm_pid) and psutil.Process(vm_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the daemon's VM outlived it"
        time.sleep(0.1)
    with pytest.raises(GuestCrashed, match="is gone"):
        lease.vm.exec(ExecRequest(argv=("/bin/true",), timeout=10))  # the step fails cleanly
    lease.release()
    remote.close()
    assert client.connect(load_project_config(project), socket_path) is None  # a dead daemon's socket: no pool

    restarted = subprocess.run([sys.executable, "-m", "lg", "pool", "status", "--json"], cwd=project,
                               env={**os.environ, "LG_POOL_SOCKET": str(socket_path)}, capture_output=True,
                               text=True, timeout=60, check=False)
    assert restarted.returncode == 0 and json.loads(restarted.stdout)["daemon"] is None
    second = subprocess.Popen([sys.executable, "-m", "lg", "pool", "serve"], cwd=project,
                              env={**os.environ, "LG_POOL_SOCKET": str(socket_path)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert second.stdout is not None
        lines = [second.stdout.readline(), second.stdout.readline()]
        assert "serving" in lines[0] and "reaped leftovers: 1 vms" in lines[1]  # the dead daemon's run directory
        assert not list((project / ".lg" / "pool-vms").iterdir())
    finally:
        second.terminate()
        second.wait(timeout=60)
    assert not socket_path.exists()


def test_a_pool_asked_for_an_image_it_does_not_have_says_so(daemon: tuple[subprocess.Popen[str], Path, Path],
                                                            pool_spec: VmSpec, tmp_path: Path) -> None:
    from dataclasses import replace

    from lg.config.project import load_project_config
    from lg.pool import client
    from lg.pool.wire import PoolDaemonError

    _, socket_path, project = daemon
    remote = client.connect(load_project_config(project), socket_path)
    assert remote is not None
    missing = replace(pool_spec, image=replace(pool_spec.image, kernel=tmp_path / "no-such-vmlinux"))  # type: ignore[type-var]
    with pytest.raises(PoolDaemonError, match="no-such-vmlinux does not exist"):
        remote.lease(key_for("qemu", missing, profile_digest({})), missing, timeout=5)
    remote.close()


def test_lg_run_uses_the_daemon_when_one_serves(daemon: tuple[subprocess.Popen[str], Path, Path]) -> None:
    from lg.runs.store import RunStore

    _, socket_path, project = daemon
    (project / "pipeline.yaml").write_text("name: via-daemon\nsteps:\n  - id: a\n    run: echo a > a.txt\n"
                                           "  - id: b\n    needs: a\n    run: cat a.txt > b.txt\n")
    done = subprocess.run([sys.executable, "-m", "lg", "run", "pipeline.yaml"], cwd=project, capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, "LG_POOL_SOCKET": str(socket_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "b.txt").read_text() == "a\n"
    store = RunStore(project / ".lg")
    steps = store.steps(store.runs(1)[0].id)
    assert all((s.vm or {}).get("source") in ("warm", "restored") for s in steps)
    assert all("pool daemon" in str((s.security or {}).get("vmm", {}).get("owner")) for s in steps)
    assert len({(s.vm or {}).get("vm") for s in steps}) == 2  # two steps, two VMs
