"""The Firecracker backend: one `firecracker` process per VM, configured over its API socket, confined by
Firecracker's own `jailer`, its guest agent reached over hybrid vsock.

Held to Firecracker's published API: `src/firecracker/swagger/firecracker.yaml` and docs/jailer.md,
docs/vsock.md, docs/snapshotting/snapshot-support.md of firecracker-microvm/firecracker at v1.16.1 (the facts lg
relies on are written down in tests/vm/contracts/firecracker-v1.16.1.json, which the tests hold lg's requests to).

Boot: PUT /machine-config, /boot-source (the image's uncompressed vmlinux and initrd), /drives/root (a private copy
of the image's ext4 root disk: Firecracker takes raw files, no overlays), /vsock, then PUT /actions InstanceStart.
Snapshot: PATCH /vm Paused, PUT /snapshot/create (Full); the VM stays paused. Restore: a *fresh* process (the
API accepts /snapshot/load only before anything but the logger and metrics is configured) loads the state and
the memory file (mapped, never changed) with a vsock_override for its own socket, and resumes; every vsock
connection is closed across a snapshot (the guest's listener stays), so lg connects anew and resyncs the clock.

Every path Firecracker is given is relative to its working directory, which is its jail's root when jailed:
a restored VM finds its disk and sockets at the same relative paths, as snapshot-support.md requires.

Jailer (docs/jailer.md): when running as root with `jailer` installed, each VM's Firecracker is started by it:
a chroot of its own under the VM's run directory, a uid/gid of its own, a cgroup v2 with memory, CPU and pid
limits, a new pid namespace. Without it, Firecracker runs unconfined as lg's user, and the VM says so.

Not available on lg's development machines (no firecracker binary, KVM that does not boot guests): there the
backend is exercised against fakes of its API and jailer (tests/vm/fakevmm), never for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit
from lg.model import ProjectConfig
from lg.vm import host
from lg.vm.api import BootFailed, GuestImage, HostProbe, Problem, Vm, VmError, VmSpec
from lg.vm.cmdline import kernel_cmdline
from lg.vm.rundir import create_run_dir, reap_leftovers
from lg.vm.unix_http import ApiClient, ApiError, ApiResponse
from lg.vm.vmm_binary import VmmBinary
from lg.vm.vsock_vm import (
    AGENT_VSOCK_PORT,
    GUEST_CID,
    SnapshotMeta,
    VsockVm,
    agent_boot_arg,
    destroyed_on_failure,
    link_or_copy,
    private_disk,
    probe_kvm_vmm,
    refuse_kvm_only_gaps,
)

NAME = "firecracker"
API_VERSION = "1.16.1"  # the swagger document lg's requests are checked against
INSTALL_FIX = ("install Firecracker's release binaries (firecracker and jailer, github.com/firecracker-microvm/"
               "firecracker/releases; not packaged for Debian 12) on PATH, on a Linux host with KVM")
API_SOCKET = "api.sock"
VSOCK_SOCKET = "vsock.sock"
KERNEL, INITRD, DISK = "vmlinux", "initrd", "rootfs.ext4"
STATE, MEMORY = "snapshot.state", "snapshot.mem"  # as Firecracker writes them in its working directory
SNAPSHOT_META = SnapshotMeta("snapshot.json", NAME, "Firecracker", API_VERSION)
# Firecracker's own kernel arguments when boot_args is absent include these two; lg passes its own line.
FIRECRACKER_ARGS = ("reboot=k", "pci=off")
JAIL_PARENT_CGROUP = "lg-firecracker"
JAIL_ID_BASE = 900_000  # each jailed VM runs as uid = gid = base + a number of its own
VMM_OVERHEAD_MIB = 128  # memory.max is the guest's RAM plus this for the VMM itself
JAIL_PIDS_MAX = 64


def fault_message(response: ApiResponse) -> str:
    """Firecracker's error body (definitions/Error): {"fault_message": "..."}."""
    body = response.body
    if isinstance(body, dict) and isinstance(body.get("fault_message"), str):
        return str(body["fault_message"])
    return response.text.strip()[:500]


class FirecrackerVm(VsockVm):
    backend = NAME

    def __init__(self, vm_id: str, run_dir: Path, files_dir: Path, jail: Jail | None) -> None:
        super().__init__(vm_id, run_dir, files_dir)
        self.jail = jail
        self.api = ApiClient(files_dir / API_SOCKET, fault=fault_message)
        self.has_disk = False
        self.signature = ""

    @property
    def vsock_socket(self) -> Path:
        return self.files_dir / VSOCK_SOCKET

    def release_host_resources(self) -> None:
        if self.jail is not None:
            self.jail.release()


class FirecrackerHypervisor:
    """A SnapshotBackend. `jailer`: None uses it when it is installed and lg runs as root; True requires it."""

    name = NAME

    def __init__(self, config: ProjectConfig | None = None, *, state_dir: Path | None = None,
                 binary: str = "firecracker", jailer_binary: str = "jailer", jailer: bool | None = None,
                 cgroup_root: Path | None = None) -> None:
        if state_dir is None:
            state_dir = config.state_dir if config is not None else Path.cwd() / ".lg"
        self.state_dir = state_dir
        self.vmm = VmmBinary(NAME, binary, INSTALL_FIX)
        self.jailer_binary = VmmBinary(NAME, jailer_binary, INSTALL_FIX)
        self.jailer = jailer
        self.cgroup_root = cgroup_root

    # --- probe ---

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        return probe_kvm_vmm(self.vmm, tuple(self._jailer_problems()))

    def _jailer_problems(self) -> list[Problem]:
        if self._use_jailer():
            return []
        if self.jailer_binary.path() is None:
            return [Problem("jailer is not installed: Firecracker would run unconfined",
                            "install the jailer of the same Firecracker release beside it", fatal=self.jailer is True)]
        return [Problem("not running as root: the jailer cannot confine Firecracker",
                        "run lg as root to jail each VM (chroot, own uid, cgroup, pid namespace)",
                        fatal=self.jailer is True)]

    def _use_jailer(self) -> bool:
        if self.jailer is False:
            return False
        return self.jailer_binary.path() is not None and os.geteuid() == 0

    # --- SnapshotBackend ---

    def fingerprint(self) -> str:
        return host.host_fingerprint(extra=f"firecracker {self.vmm.path()} {self.vmm.version()}")

    def boot_signature(self, spec: VmSpec) -> str:
        return json.dumps({"backend": NAME, "image": spec.image.digest, "vcpus": spec.vcpus,
                           "memory_mib": spec.memory_mib, "cmdline": self._cmdline(spec),
                           "disk": spec.image.rootfs is not None, "jailer": self._use_jailer()}, sort_keys=True)

    # --- boot ---

    def boot(self, spec: VmSpec) -> FirecrackerVm:
        self._refuse_unsupported(spec)
        vm = self._new_vm(spec)
        with destroyed_on_failure(vm, "Firecracker refused to boot it"):
            link_or_copy(spec.image.kernel, vm.files_dir / KERNEL)
            link_or_copy(spec.image.initrd, vm.files_dir / INITRD)
            if spec.image.rootfs is not None:
                private_disk(spec.image.rootfs, vm.files_dir / DISK)
                vm.has_disk = True
            self._start(vm, spec)
            self._configure(vm, spec)
            vm.api.call("PUT", "/actions", {"action_type": "InstanceStart"})
            vm.wait_ready(spec.boot_timeout)
        return vm

    def _configure(self, vm: FirecrackerVm, spec: VmSpec) -> None:
        api = vm.api
        api.call("PUT", "/machine-config", {"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib})
        api.call("PUT", "/boot-source", {"kernel_image_path": KERNEL, "initrd_path": INITRD,
                                         "boot_args": self._cmdline(spec)})
        if vm.has_disk:
            # Not the root device: lg's stage-1 init (in the initrd) loads virtio_blk and mounts /dev/vda itself.
            api.call("PUT", "/drives/root", {"drive_id": "root", "path_on_host": DISK, "is_root_device": False,
                                             "is_read_only": False})
        api.call("PUT", "/vsock", {"guest_cid": GUEST_CID, "uds_path": VSOCK_SOCKET})

    def _cmdline(self, spec: VmSpec) -> str:
        return " ".join((kernel_cmdline(spec.image, spec.hostname, host.tsc_khz()), *FIRECRACKER_ARGS,
                         agent_boot_arg(AGENT_VSOCK_PORT)))

    def _refuse_unsupported(self, spec: VmSpec) -> None:
        refuse_kvm_only_gaps(spec, self.vmm, "Firecracker")
        if self.jailer is True and not self._use_jailer():
            problem = self._jailer_problems()[0]
            raise EnvironmentUnfit(problem.message, fix=problem.fix)

    def _new_vm(self, spec: VmSpec) -> FirecrackerVm:
        parent = spec.run_dir if spec.run_dir is not None else self.state_dir / "vms"
        reap_leftovers(parent)
        vm_id = f"vm-{secrets.token_hex(5)}"
        run_dir = create_run_dir(parent, vm_id)
        jail = None
        if self._use_jailer():
            vmm_path = self.vmm.path()
            if vmm_path is None:
                raise EnvironmentUnfit("firecracker is not installed", fix=INSTALL_FIX)
            jail = Jail(vm_id, run_dir, vmm_path, self.cgroup_root or cgroup2_mount())
            jail.root.mkdir(parents=True)
        vm = FirecrackerVm(vm_id, run_dir, jail.root if jail else run_dir, jail)
        vm.image_digest = spec.image.digest
        vm.signature = self.boot_signature(spec)
        return vm

    def _start(self, vm: FirecrackerVm, spec: VmSpec) -> None:
        binary = self.vmm.path()
        if binary is None:
            raise EnvironmentUnfit("firecracker is not installed", fix=INSTALL_FIX)
        if vm.jail is None:
            vm.confinement = {"vmm": NAME, "jailer": "none: Firecracker runs unconfined as lg's user",
                              "chroot": "none", "uid": os.geteuid()}
            vm.start([str(binary), "--api-sock", API_SOCKET, "--id", vm.id], cwd=vm.files_dir)
        else:
            jailer = self.jailer_binary.path()
            if jailer is None:
                raise EnvironmentUnfit("jailer is not installed", fix=INSTALL_FIX)
            vm.jail.prepare(vm.files_dir, vm.has_disk)
            vm.confinement = vm.jail.describe(spec)
            vm.start(vm.jail.argv(jailer, spec), cwd=vm.run_dir)
            vm.adopt_vmm_pid(vm.jail.wait_for_pid(vm, time.monotonic() + 30))
        vm.api.wait_listening(time.monotonic() + 30, vm.check_alive)

    # --- snapshots ---

    def save_snapshot(self, vm: Vm, path: Path) -> None:
        """Pause `vm`, write its state and memory (a Full snapshot) and a copy of its disk under `path`."""
        if not isinstance(vm, FirecrackerVm):
            raise VmError(f"VM {vm.id} was not booted by Firecracker: the Firecracker backend cannot save it")
        path.mkdir(parents=True, exist_ok=True)
        try:
            vm.api.call("PATCH", "/vm", {"state": "Paused"})
            vm.api.call("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": STATE,
                                                    "mem_file_path": MEMORY})
        except ApiError as error:
            raise VmError(f"VM {vm.id}: Firecracker could not save a snapshot: {error.message}") from None
        for name in (STATE, MEMORY):
            shutil.move(vm.files_dir / name, path / name)
            (path / name).chmod(0o644)  # a clone runs as another uid than its template: it must read them
        if vm.has_disk:
            private_disk(vm.files_dir / DISK, path / DISK)
            (path / DISK).chmod(0o644)
        SNAPSHOT_META.write(path, vm.image_digest, vm.has_disk, vm.signature)

    def restore(self, snapshot: Path, spec: VmSpec) -> FirecrackerVm:
        """A fresh Firecracker process that loads `snapshot` and resumes it; its agent connected anew and its
        clock and RNG resynced."""
        meta = SNAPSHOT_META.read(snapshot, spec)
        self._refuse_unsupported(spec)
        vm = self._new_vm(spec)
        with destroyed_on_failure(vm, f"Firecracker could not restore {snapshot}"):
            link_or_copy(snapshot / STATE, vm.files_dir / STATE)
            link_or_copy(snapshot / MEMORY, vm.files_dir / MEMORY)
            if meta.get("disk"):
                private_disk(snapshot / DISK, vm.files_dir / DISK)
                vm.has_disk = True
            self._start(vm, spec)
            vm.api.call("PUT", "/snapshot/load", {
                "snapshot_path": STATE,
                "mem_backend": {"backend_type": "File", "backend_path": MEMORY},
                "vsock_override": {"uds_path": VSOCK_SOCKET},
                "resume_vm": True,
            })
            vm.wait_ready(spec.boot_timeout)
            vm.resync()
        return vm


# --- the jailer -------------------------------------------------------------------------------------------


def cgroup2_mount(mounts: Path = Path("/proc/mounts")) -> Path:
    """Where the cgroup v2 hierarchy is mounted (the jailer finds it the same way, in /proc/mounts)."""
    try:
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    except OSError:
        pass
    return Path("/sys/fs/cgroup")


class Jail:
    """One VM's jail, as docs/jailer.md lays it out: <chroot base>/<exec file name>/<id>/root, the VMM's pid in
    <root>/<exec file name>.pid, its cgroup <cgroup v2 root>/<parent cgroup>/<id>."""

    def __init__(self, vm_id: str, run_dir: Path, vmm: Path, cgroup_root: Path) -> None:
        self.id = vm_id
        self.base = run_dir / "jail"
        self.exec_name = vmm.name
        self.vmm = vmm
        self.root = self.base / self.exec_name / vm_id / "root"
        self.uid = self.gid = JAIL_ID_BASE + int(vm_id.removeprefix("vm-"), 16) % 65536
        self.cgroup = cgroup_root / JAIL_PARENT_CGROUP / vm_id

    def prepare(self, files_dir: Path, has_disk: bool) -> None:
        """What Firecracker writes must be its uid's: the jail's root (the jailer chowns it too) and its disk.
        Kernel, initrd, snapshot state and memory are hard links it only reads (mode 0644)."""
        if has_disk:
            os.chown(files_dir / DISK, self.uid, self.gid)

    def argv(self, jailer: Path, spec: VmSpec) -> list[str]:
        memory_max = (spec.memory_mib + VMM_OVERHEAD_MIB) << 20
        return [
            str(jailer), "--id", self.id, "--exec-file", str(self.vmm),
            "--uid", str(self.uid), "--gid", str(self.gid),
            "--chroot-base-dir", str(self.base),
            "--cgroup-version", "2", "--parent-cgroup", JAIL_PARENT_CGROUP,
            "--cgroup", f"memory.max={memory_max}",
            "--cgroup", f"cpu.max={spec.vcpus * 100000} 100000",
            "--cgroup", f"pids.max={JAIL_PIDS_MAX}",
            "--new-pid-ns",
            "--", "--api-sock", f"/{API_SOCKET}",
        ]

    def describe(self, spec: VmSpec) -> dict[str, Any]:
        return {"vmm": NAME, "jailer": "firecracker jailer", "chroot": str(self.root), "uid": self.uid,
                "gid": self.gid, "cgroup": str(self.cgroup), "cgroup_version": 2,
                "memory_max_bytes": (spec.memory_mib + VMM_OVERHEAD_MIB) << 20,
                "cpu_max": f"{spec.vcpus * 100000} 100000", "pids_max": JAIL_PIDS_MAX, "pid_namespace": True}

    def wait_for_pid(self, vm: FirecrackerVm, deadline: float) -> int:
        """The jailed Firecracker's pid, which the jailer writes to <root>/<exec file name>.pid."""
        pid_file = self.root / f"{self.exec_name}.pid"
        while True:
            try:
                return int(pid_file.read_text().strip())
            except (OSError, ValueError):
                pass
            if vm.process is not None and vm.process.poll() not in (None, 0):
                vm.check_alive()
            if time.monotonic() > deadline:
                raise BootFailed(f"VM {vm.id}: the jailer never wrote {pid_file.name}: {vm.vmm_log_tail()}")
            time.sleep(0.01)

    def release(self) -> None:
        """The jailer leaves cleanup to its user (docs/jailer.md): remove the VM's cgroup once it is empty."""
        with contextlib.suppress(OSError):
            self.cgroup.rmdir()
