"""The QEMU backend: `-M microvm` guests booted from a PVH vmlinux, reached over virtio-serial.

One VM is one qemu process (lg.vm.qemu_vm), with its files in a private run directory that `destroy()` removes;
its command line is lg.vm.qemu_argv's. Control goes through QMP; the agent channel is a virtio-serial port
bound to a unix socket. `accelerator: auto` tries KVM once per host with a short deadline (the verdict is
cached in the state directory) and falls back to TCG; the VM records which one actually ran. Snapshots
(lg.vm.qemu_snapshot) make this a `SnapshotBackend`: the pool restores its VMs from template snapshots.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from lg.errors import EnvironmentUnfit
from lg.model import ProjectConfig
from lg.vm import host, network, qemu_snapshot, vmm_cgroup
from lg.vm.api import (
    Accelerator,
    BootFailed,
    GuestImage,
    HostProbe,
    KvmStatus,
    Problem,
    Vm,
    VmError,
    VmSpec,
)
from lg.vm.cmdline import kernel_cmdline
from lg.vm.qemu_argv import create_overlay, qemu_argv
from lg.vm.qemu_vm import QemuVm
from lg.vm.rundir import create_run_dir, reap_leftovers
from lg.vm.vmm_binary import VmmBinary

QEMU_BINARY = "qemu-system-x86_64"
INSTALL_FIX = "apt-get install qemu-system-x86 (Debian/Ubuntu), then run `lg doctor` again"
KVM_PROBE_SECONDS = 15.0  # a guest that works under KVM answers in about a second
KVM_VERDICT_FILE = Path("vm") / "kvm-verdict.json"


# --- KVM verdict cache --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KvmVerdict:
    usable: bool
    reason: str
    fingerprint: str


def load_verdict(path: Path, fingerprint: str) -> KvmVerdict | None:
    try:
        data = json.loads(path.read_text())
        verdict = KvmVerdict(bool(data["usable"]), str(data["reason"]), str(data["fingerprint"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return verdict if verdict.fingerprint == fingerprint else None


def store_verdict(path: Path, verdict: KvmVerdict) -> None:
    with contextlib.suppress(OSError):  # a read-only state dir only costs a probe next time
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(verdict.__dict__))
        staging.replace(path)


# --- the hypervisor -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Attempt:
    accelerator: Accelerator
    timeout: float
    records_verdict: bool  # a KVM attempt under `auto`: its outcome is the host's verdict
    last: bool  # no fallback after this one


class QemuHypervisor:
    name = "qemu"

    def __init__(self, config: ProjectConfig | None = None, *, state_dir: Path | None = None,
                 binary: str = QEMU_BINARY) -> None:
        if state_dir is None:
            state_dir = config.state_dir if config is not None else Path.cwd() / ".lg"
        self.state_dir = state_dir
        # Whether KVM boots a guest is a fact about the host, not the project: keep the verdict beside the
        # images (host-wide), or every new project and every test would pay the KVM probe again.
        self.verdict_dir = config.cache_dir if config is not None else state_dir
        self.binary = binary
        self.vmm = VmmBinary("qemu", binary, INSTALL_FIX, version_pattern=r"version (\S+)")

    @property
    def verdict_path(self) -> Path:
        return self.verdict_dir / KVM_VERDICT_FILE

    def binary_path(self) -> Path | None:
        return self.vmm.path()

    def version(self) -> str | None:
        return self.vmm.version() if self.binary_path() is not None else None

    def fingerprint(self) -> str:
        return host.host_fingerprint(extra=f"{self.binary_path()} {self.version()}")

    # --- probe ---

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        binary, version = self.binary_path(), self.version()
        problems: list[Problem] = []
        if binary is None:
            problems.append(Problem(f"{self.binary} is not installed", INSTALL_FIX, fatal=True))
        kvm = self._kvm_status(image if binary is not None else None)
        if kvm.present and kvm.usable is False:
            problems.append(Problem(f"KVM does not boot guests here ({kvm.reason}); using TCG (slower)",
                                    "use a host with working (nested) KVM for fast VMs; TCG works meanwhile"))
        elif not kvm.present:
            problems.append(Problem(f"KVM unavailable: {kvm.reason}; using TCG (slower)",
                                    "enable virtualisation (or nested KVM) and load kvm_intel/kvm_amd"))
        auto: Accelerator | None = None
        if binary is not None:
            auto = "kvm" if kvm.usable else "tcg"
        return HostProbe(self.name, binary, version, kvm, auto, tuple(problems))

    def _kvm_status(self, image: GuestImage | None) -> KvmStatus:
        present, reason = host.kvm_device_status()
        if not present:
            return KvmStatus(False, False, reason)
        verdict = load_verdict(self.verdict_path, self.fingerprint())
        if verdict is None and image is not None:
            verdict = self._test_kvm(image)
        if verdict is None:
            return KvmStatus(True, None, f"{reason}; no guest booted under it yet")
        return KvmStatus(True, verdict.usable, verdict.reason)

    def _test_kvm(self, image: GuestImage) -> KvmVerdict:
        spec = VmSpec(image=image, accelerator="kvm", hostname="lg-kvm-probe")
        try:
            self._boot_once(spec, _Attempt("kvm", KVM_PROBE_SECONDS, records_verdict=True, last=True)).destroy()
        except VmError as kvm_error:
            # Blame KVM only if the same image boots under TCG; otherwise the image is what is broken.
            try:
                self._boot_once(spec, _Attempt("tcg", spec.boot_timeout, records_verdict=False, last=True)).destroy()
            except VmError as tcg_error:
                first = tcg_error.message.splitlines()[0]
                return KvmVerdict(False, f"untested: the test image does not boot under TCG either ({first})", "")
            return self._record(False, kvm_error)
        return self._record(True, None)

    def _record(self, usable: bool, error: VmError | None) -> KvmVerdict:
        if usable:
            reason = "a guest booted under KVM"
        else:
            first_line = error.message.splitlines()[0] if error and error.message else "unknown failure"
            reason = f"a test boot under KVM failed: {first_line}"
        verdict = KvmVerdict(usable, reason, self.fingerprint())
        store_verdict(self.verdict_path, verdict)
        return verdict

    # --- boot ---

    def boot(self, spec: VmSpec) -> QemuVm:
        if self.binary_path() is None:
            raise EnvironmentUnfit(f"{self.binary} is not installed", fix=INSTALL_FIX)
        reap_leftovers(self._run_parent(spec))
        vmm_cgroup.reap()
        kvm_failure: VmError | None = None
        for attempt in self._plan(spec):
            try:
                vm = self._boot_once(spec, attempt)
            except VmError as error:
                if attempt.last:
                    raise  # a KVM failure is not recorded: the image itself may be what is broken
                kvm_failure = error if attempt.records_verdict else kvm_failure
                continue
            if attempt.records_verdict:
                self._record(True, None)
            elif kvm_failure is not None:
                self._record(False, kvm_failure)  # the fallback booted the same image: KVM is to blame
            return vm
        raise BootFailed("no accelerator left to try")  # unreachable: the last attempt raises

    def _plan(self, spec: VmSpec) -> list[_Attempt]:
        choice = spec.accelerator
        if choice == "tcg":
            return [_Attempt("tcg", spec.boot_timeout, records_verdict=False, last=True)]
        present, reason = host.kvm_device_status()
        if choice == "kvm":
            if not present:
                raise EnvironmentUnfit(f"accelerator kvm requested but {reason}",
                                       fix="set `accelerator: auto` or `tcg` in lg.yaml")
            return [_Attempt("kvm", spec.boot_timeout, records_verdict=False, last=True)]
        if choice != "auto":
            raise EnvironmentUnfit(f"unknown accelerator {choice!r}", fix="use auto, kvm or tcg")
        tcg = _Attempt("tcg", spec.boot_timeout, records_verdict=False, last=True)
        if not present:
            return [tcg]
        verdict = load_verdict(self.verdict_path, self.fingerprint())
        if verdict is None:
            return [_Attempt("kvm", KVM_PROBE_SECONDS, records_verdict=True, last=False), tcg]
        if verdict.usable:
            return [_Attempt("kvm", spec.boot_timeout, records_verdict=True, last=False), tcg]
        return [tcg]

    def boot_signature(self, spec: VmSpec) -> str:
        """The command line `boot(spec)` would run, for keys of saved state (a template snapshot restores only
        under the command line it was saved with; a change of devices or kernel arguments must not reuse it)."""
        accelerator: Accelerator = "kvm" if spec.accelerator == "kvm" else "tcg"
        cmdline = kernel_cmdline(spec.image, spec.hostname, host.tsc_khz())
        return " ".join(qemu_argv(self.binary, spec, accelerator, cmdline, spec.image.rootfs is not None))

    def save_snapshot(self, vm: Vm, path: Path) -> None:
        """Save `vm`'s full state under `path` (see lg.vm.qemu_snapshot); it stays paused."""
        if not isinstance(vm, QemuVm):
            raise VmError(f"VM {vm.id} was not booted by QEMU: the QEMU backend cannot save it")
        qemu_snapshot.save(vm, path)

    def restore(self, snapshot: Path, spec: VmSpec) -> QemuVm:
        """A new VM resumed from `snapshot` (see save_snapshot), its clock and RNG resynced with the host."""
        reap_leftovers(self._run_parent(spec))
        vmm_cgroup.reap()
        return qemu_snapshot.restore(snapshot, spec, self._run_parent(spec))

    def _run_parent(self, spec: VmSpec) -> Path:
        return spec.run_dir if spec.run_dir is not None else self.state_dir / "vms"

    def _boot_once(self, spec: VmSpec, attempt: _Attempt) -> QemuVm:
        binary = self.binary_path()
        if binary is None:
            raise EnvironmentUnfit(f"{self.binary} is not installed", fix=INSTALL_FIX)
        vm_id = f"vm-{secrets.token_hex(5)}"
        run_dir = create_run_dir(self._run_parent(spec), vm_id)
        vm = QemuVm(vm_id, attempt.accelerator, run_dir)
        vm.image_digest = spec.image.digest
        try:
            overlay = create_overlay(run_dir, spec.image.rootfs) if spec.image.rootfs is not None else False
            cmdline = kernel_cmdline(spec.image, spec.hostname, host.tsc_khz())
            argv = qemu_argv(str(binary), spec, attempt.accelerator, cmdline, overlay)
            if spec.network is not None:
                vm.network = network.attach(spec.network)
                argv += vm.network.qemu_args()
            vm.start(argv)
            vm.wait_ready(attempt.timeout)
            if vm.network is not None:
                vm.agent.call("network", **vm.network.guest_settings())
        except BaseException:
            vm.destroy()
            raise
        return vm
