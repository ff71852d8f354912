"""The Cloud Hypervisor backend: one `cloud-hypervisor` process per VM, driven over its REST API on a unix
socket, its guest agent reached over hybrid vsock (the same CONNECT/OK handshake as Firecracker's).

Held to Cloud Hypervisor's published API: `vmm/src/api/openapi/cloud-hypervisor.yaml`, docs/api.md,
docs/snapshot_restore.md and docs/vsock.md of cloud-hypervisor/cloud-hypervisor at v53.0 (the facts lg relies
on are in tests/vm/contracts/cloud-hypervisor-v53.0.json, which the tests hold lg's requests to).

Boot: PUT vm.create with the payload (the image's vmlinux, initrd and command line), a private copy of the root
disk, the vsock device and the serial console on the VMM's stdout; then vm.boot. Snapshot: vm.pause, then
vm.snapshot to a file:// directory (config.json, memory-ranges, state.json) beside a copy of the disk; the VM
stays paused. Restore: a fresh VMM restores with `resume: true` from a per-clone directory whose config.json
points at the clone's own disk copy and vsock socket (the document says config.json may be edited between
snapshot and restore); lg then connects to the agent anew and resyncs its clock and RNG.

No jailer: Cloud Hypervisor has none (its own seccomp filters and optional Landlock confine it); lg runs it
unconfined as its own user in the VM's run directory, and says so in the VM's host confinement.

Not available on lg's development machines (no cloud-hypervisor binary, KVM that does not boot guests): there the
backend is exercised against a fake of its API (tests/vm/fakevmm), never for real.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit
from lg.model import ProjectConfig
from lg.vm import host
from lg.vm.api import BootFailed, GuestImage, HostProbe, Vm, VmError, VmSpec
from lg.vm.cmdline import kernel_cmdline
from lg.vm.rundir import create_run_dir, reap_leftovers
from lg.vm.unix_http import ApiClient, ApiError
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

NAME = "cloud-hypervisor"
API_VERSION = "v53.0"
API_BASE = "/api/v1"
INSTALL_FIX = ("install Cloud Hypervisor's static release binary (github.com/cloud-hypervisor/cloud-hypervisor/"
               "releases; not packaged for Debian 12) on PATH as cloud-hypervisor, on a Linux host with KVM")
API_SOCKET = "api.sock"
VSOCK_SOCKET = "vsock.sock"
DISK = "rootfs.raw"
SNAPSHOT_FILES = ("config.json", "memory-ranges", "state.json")  # docs/snapshot_restore.md
SNAPSHOT_DISK = "disk.raw"
SNAPSHOT_META = SnapshotMeta("lg-snapshot.json", NAME, "Cloud Hypervisor", API_VERSION)
CLONE_DIR = "restore"


class CloudHypervisorVm(VsockVm):
    backend = NAME

    def __init__(self, vm_id: str, run_dir: Path) -> None:
        super().__init__(vm_id, run_dir, run_dir)
        self.api = ApiClient(run_dir / API_SOCKET, base=API_BASE)
        self.has_disk = False
        self.signature = ""
        self.confinement = {"vmm": NAME, "jailer": "none: Cloud Hypervisor has no jailer; lg runs it unconfined "
                            "as its own user (the VMM applies its own seccomp filters)", "uid": os.geteuid()}

    @property
    def vsock_socket(self) -> Path:
        return self.run_dir / VSOCK_SOCKET


class CloudHypervisor:
    """A SnapshotBackend."""

    name = NAME

    def __init__(self, config: ProjectConfig | None = None, *, state_dir: Path | None = None,
                 binary: str = "cloud-hypervisor") -> None:
        if state_dir is None:
            state_dir = config.state_dir if config is not None else Path.cwd() / ".lg"
        self.state_dir = state_dir
        self.vmm = VmmBinary(NAME, binary, INSTALL_FIX)

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        return probe_kvm_vmm(self.vmm)

    def fingerprint(self) -> str:
        return host.host_fingerprint(extra=f"cloud-hypervisor {self.vmm.path()} {self.vmm.version()}")

    def boot_signature(self, spec: VmSpec) -> str:
        return json.dumps({"backend": NAME, "image": spec.image.digest, "vcpus": spec.vcpus,
                           "memory_mib": spec.memory_mib, "cmdline": self._cmdline(spec),
                           "disk": spec.image.rootfs is not None}, sort_keys=True)

    # --- boot ---

    def boot(self, spec: VmSpec) -> CloudHypervisorVm:
        self._refuse_unsupported(spec)
        vm = self._new_vm(spec)
        with destroyed_on_failure(vm, "Cloud Hypervisor refused to boot it"):
            if spec.image.rootfs is not None:
                private_disk(spec.image.rootfs, vm.run_dir / DISK)
                vm.has_disk = True
            self._start(vm)
            vm.api.call("PUT", "/vm.create", self.vm_config(vm, spec))
            vm.api.call("PUT", "/vm.boot")
            vm.wait_ready(spec.boot_timeout)
        return vm

    def vm_config(self, vm: CloudHypervisorVm, spec: VmSpec) -> dict[str, Any]:
        config: dict[str, Any] = {
            "cpus": {"boot_vcpus": spec.vcpus, "max_vcpus": spec.vcpus},
            "memory": {"size": spec.memory_mib << 20},
            "payload": {"kernel": str(spec.image.kernel.resolve()), "initramfs": str(spec.image.initrd.resolve()),
                        "cmdline": self._cmdline(spec)},
            "vsock": {"cid": GUEST_CID, "socket": str(vm.vsock_socket)},
            "serial": {"mode": "Tty"},  # the VMM's stdout: the VM's console.log
            "console": {"mode": "Off"},
        }
        if vm.has_disk:
            config["disks"] = [{"path": str(vm.run_dir / DISK), "readonly": False}]
        return config

    def _cmdline(self, spec: VmSpec) -> str:
        return " ".join((kernel_cmdline(spec.image, spec.hostname, host.tsc_khz()), agent_boot_arg(AGENT_VSOCK_PORT)))

    def _refuse_unsupported(self, spec: VmSpec) -> None:
        refuse_kvm_only_gaps(spec, self.vmm, "Cloud Hypervisor")

    def _new_vm(self, spec: VmSpec) -> CloudHypervisorVm:
        parent = spec.run_dir if spec.run_dir is not None else self.state_dir / "vms"
        reap_leftovers(parent)
        vm_id = f"vm-{secrets.token_hex(5)}"
        vm = CloudHypervisorVm(vm_id, create_run_dir(parent, vm_id))
        vm.image_digest = spec.image.digest
        vm.signature = self.boot_signature(spec)
        return vm

    def _start(self, vm: CloudHypervisorVm) -> None:
        binary = self.vmm.path()
        if binary is None:
            raise EnvironmentUnfit("cloud-hypervisor is not installed", fix=INSTALL_FIX)
        vm.start([str(binary), "--api-socket", f"path={vm.run_dir / API_SOCKET}"], cwd=vm.run_dir)
        vm.api.wait_listening(time.monotonic() + 30, vm.check_alive)

    # --- snapshots ---

    def save_snapshot(self, vm: Vm, path: Path) -> None:
        if not isinstance(vm, CloudHypervisorVm):
            raise VmError(f"VM {vm.id} was not booted by Cloud Hypervisor: this backend cannot save it")
        path.mkdir(parents=True, exist_ok=True)  # the document wants the directory to exist
        try:
            vm.api.call("PUT", "/vm.pause")
            vm.api.call("PUT", "/vm.snapshot", {"destination_url": f"file://{path.resolve()}"})
        except ApiError as error:
            raise VmError(f"VM {vm.id}: Cloud Hypervisor could not save a snapshot: {error.message}") from None
        if vm.has_disk:
            private_disk(vm.run_dir / DISK, path / SNAPSHOT_DISK)
        SNAPSHOT_META.write(path, vm.image_digest, vm.has_disk, vm.signature)

    def restore(self, snapshot: Path, spec: VmSpec) -> CloudHypervisorVm:
        meta = SNAPSHOT_META.read(snapshot, spec)
        missing = [name for name in SNAPSHOT_FILES if not (snapshot / name).is_file()]
        if missing:
            raise BootFailed(f"snapshot {snapshot} lacks {', '.join(missing)}")
        self._refuse_unsupported(spec)
        vm = self._new_vm(spec)
        with destroyed_on_failure(vm, f"Cloud Hypervisor could not restore {snapshot}"):
            if meta.get("disk"):
                private_disk(snapshot / SNAPSHOT_DISK, vm.run_dir / DISK)
                vm.has_disk = True
            clone = self._clone_directory(vm, snapshot)
            self._start(vm)
            vm.api.call("PUT", "/vm.restore", {"source_url": f"file://{clone}", "resume": True})
            vm.wait_ready(spec.boot_timeout)
            vm.resync()
        return vm

    def _clone_directory(self, vm: CloudHypervisorVm, snapshot: Path) -> Path:
        """The snapshot as this clone restores it: state and memory linked (never written), config.json with
        this clone's disk copy and vsock socket (each clone must not open its template's)."""
        clone = vm.run_dir / CLONE_DIR
        clone.mkdir()
        for name in ("memory-ranges", "state.json"):
            link_or_copy(snapshot / name, clone / name)
        try:
            config = json.loads((snapshot / "config.json").read_text())
        except (OSError, ValueError) as error:
            raise BootFailed(f"{snapshot} has no readable config.json: {error}") from error
        if isinstance(config.get("vsock"), dict):
            config["vsock"]["socket"] = str(vm.vsock_socket)
        if vm.has_disk and config.get("disks"):
            config["disks"][0]["path"] = str(vm.run_dir / DISK)
        (clone / "config.json").write_text(json.dumps(config))
        return clone

