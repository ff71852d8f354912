"""The Apple Virtualization.framework backend, for macOS hosts, through PyObjC (pyobjc-framework-Virtualization and
pyobjc-framework-libdispatch: the `macos` extra of lg's pyproject.toml, imported only when this backend boots).

A VM: VZLinuxBootLoader with the image's kernel (an uncompressed arm64 `Image` or x86_64 vmlinux, as the host's
architecture needs), initrd and command line; a virtio console on a serial port whose output goes to the VM's
console.log; the image's root disk (a private copy) as a virtio block device; an entropy device; and a virtio
socket device, on which the guest agent listens (the guest side is the same AF_VSOCK listener Firecracker's and
Cloud Hypervisor's guests use; the host side is VZVirtioSocketDevice.connectToPort, no CONNECT line). The
framework runs each VM in its own XPC service process, sandboxed by macOS: lg has no VMM process to confine.

Snapshots (macOS 14 and later, on Apple silicon): pause, saveMachineStateToURL; a clone is a new VZVirtualMachine
of the same configuration that restoreMachineStateFromURL and resume, then lg connects to the agent anew and
resyncs its clock and RNG. The configuration must pass validateSaveRestoreSupportWithError.

Needs (docs/backends.md): macOS 11+ (12+ for the virtio console used here), the Python that runs lg signed with the
`com.apple.security.virtualization` entitlement, and the pyobjc packages. The selectors lg calls are listed in
SELECTORS and checked (tests/vm/test_apple.py) against facts written down from pyobjc 12.2.2's metadata.

Not available on lg's development machines (Linux): there the backend runs against a fake Virtualization module
(tests/vm/fakevz.py), never for real.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit
from lg.model import ProjectConfig
from lg.vm.agent_client import AgentClient
from lg.vm.api import (
    AgentUnresponsive,
    BootFailed,
    GuestCrashed,
    GuestImage,
    HostProbe,
    KvmStatus,
    Problem,
    Vm,
    VmError,
    VmSpec,
)
from lg.vm.base import AgentVm
from lg.vm.cmdline import kernel_cmdline
from lg.vm.console import read_console_tail
from lg.vm.rundir import create_run_dir
from lg.vm.vsock_vm import AGENT_VSOCK_PORT, agent_boot_arg, private_disk

NAME = "apple"
ENTITLEMENT = "com.apple.security.virtualization"
INSTALL_FIX = "pip install 'luminaguard[macos]' (pyobjc-framework-Virtualization, pyobjc-framework-libdispatch)"
ENTITLEMENT_FIX = (f"sign the Python that runs lg with the {ENTITLEMENT} entitlement "
                   "(codesign --force --sign - --entitlements lg.entitlements \"$(python3 -c 'import sys; "
                   "print(sys.executable)')\"; docs/backends.md)")
CONSOLE_LOG = "console.log"
DISK = "rootfs.img"
STATE = "machine.vzvmsave"
META = "snapshot.json"
CALL_TIMEOUT = 120.0

SELECTORS: tuple[tuple[str, str], ...] = (
    # (class, selector) of every framework method lg calls: tests/vm/test_apple.py checks them against pyobjc's
    # metadata facts (tests/vm/contracts/pyobjc-virtualization-12.2.2.json).
    ("VZLinuxBootLoader", "initWithKernelURL:"),
    ("VZLinuxBootLoader", "setInitialRamdiskURL:"),
    ("VZLinuxBootLoader", "setCommandLine:"),
    ("VZVirtualMachineConfiguration", "init"),
    ("VZVirtualMachineConfiguration", "setBootLoader:"),
    ("VZVirtualMachineConfiguration", "setCPUCount:"),
    ("VZVirtualMachineConfiguration", "setMemorySize:"),
    ("VZVirtualMachineConfiguration", "setSerialPorts:"),
    ("VZVirtualMachineConfiguration", "setStorageDevices:"),
    ("VZVirtualMachineConfiguration", "setSocketDevices:"),
    ("VZVirtualMachineConfiguration", "setEntropyDevices:"),
    ("VZVirtualMachineConfiguration", "validateWithError:"),
    ("VZVirtualMachineConfiguration", "validateSaveRestoreSupportWithError:"),
    ("VZFileSerialPortAttachment", "initWithURL:append:error:"),
    ("VZVirtioConsoleDeviceSerialPortConfiguration", "init"),
    ("VZVirtioConsoleDeviceSerialPortConfiguration", "setAttachment:"),
    ("VZDiskImageStorageDeviceAttachment", "initWithURL:readOnly:error:"),
    ("VZVirtioBlockDeviceConfiguration", "initWithAttachment:"),
    ("VZVirtioSocketDeviceConfiguration", "init"),
    ("VZVirtioEntropyDeviceConfiguration", "init"),
    ("VZVirtualMachine", "initWithConfiguration:queue:"),
    ("VZVirtualMachine", "startWithCompletionHandler:"),
    ("VZVirtualMachine", "pauseWithCompletionHandler:"),
    ("VZVirtualMachine", "resumeWithCompletionHandler:"),
    ("VZVirtualMachine", "stopWithCompletionHandler:"),
    ("VZVirtualMachine", "saveMachineStateToURL:completionHandler:"),
    ("VZVirtualMachine", "restoreMachineStateFromURL:completionHandler:"),
    ("VZVirtualMachine", "socketDevices"),
    ("VZVirtualMachine", "canStop"),
    ("VZVirtualMachine", "state"),
    ("VZVirtioSocketDevice", "connectToPort:completionHandler:"),
    ("VZVirtioSocketConnection", "fileDescriptor"),
    ("VZVirtioSocketConnection", "close"),
)


@dataclass(frozen=True)
class Framework:
    """What lg takes from PyObjC: the Virtualization module, a file URL maker (Foundation's NSURL) and libdispatch's
    queue functions. Loaded lazily, only on macOS; tests hand in a fake one."""

    vz: Any
    file_url: Callable[[str], Any]
    make_queue: Callable[[str], Any]
    on_queue: Callable[[Any, Callable[[], None]], None]  # dispatch_sync


def load_framework() -> Framework:
    try:
        import dispatch  # noqa: PLC0415 - macOS only, on use
        import Foundation  # noqa: PLC0415
        import Virtualization  # noqa: PLC0415
    except ImportError as error:
        raise EnvironmentUnfit(f"PyObjC's Virtualization bindings are not installed ({error})",
                               fix=INSTALL_FIX) from None
    return Framework(
        vz=Virtualization,
        file_url=Foundation.NSURL.fileURLWithPath_,
        make_queue=lambda label: dispatch.dispatch_queue_create(label.encode(), None),
        on_queue=dispatch.dispatch_sync,
    )


@dataclass(frozen=True)
class MacHost:
    """The facts of the host the probe reads (tests give others)."""

    system: str
    release: str  # the macOS version, "14.5"; "" elsewhere
    machine: str  # arm64, x86_64
    entitled: bool | None  # the running Python has the virtualization entitlement; None: not known

    @classmethod
    def this(cls) -> MacHost:
        system = platform.system()
        if system != "Darwin":
            return cls(system, "", platform.machine(), None)
        return cls(system, platform.mac_ver()[0], platform.machine(), _entitled(sys.executable))

    def version(self) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in self.release.split("."))
        except ValueError:
            return ()

    @property
    def can_save(self) -> bool:
        return self.version() >= (14,) and self.machine == "arm64"


def _entitled(executable: str) -> bool | None:
    try:
        done = subprocess.run(["codesign", "-d", "--entitlements", "-", "--xml", executable],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ENTITLEMENT in done.stdout + done.stderr


class _Waiter:
    """A completion handler and the wait for it: the framework calls it on the VM's queue."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.done = threading.Event()
        self.result: tuple[Any, ...] = ()

    def handler(self, *result: Any) -> None:
        self.result = result
        self.done.set()

    def wait(self, timeout: float = CALL_TIMEOUT) -> tuple[Any, ...]:
        if not self.done.wait(timeout):
            raise VmError(f"Virtualization.framework did not finish {self.what} within {timeout:.0f}s")
        error = self.result[-1] if self.result else None
        if error is not None:
            raise VmError(f"Virtualization.framework: {self.what} failed: {_describe(error)}")
        return self.result


def _describe(error: Any) -> str:
    with contextlib.suppress(Exception):
        return str(error.localizedDescription())
    return str(error)


class AppleVm(AgentVm):
    def __init__(self, vm_id: str, run_dir: Path, framework: Framework, can_save: bool) -> None:
        super().__init__(vm_id, "hvf")
        self.run_dir = run_dir
        self.fw = framework
        self.queue = framework.make_queue(f"lg.vm.{vm_id}")
        self.machine: Any = None
        self.connection: Any = None  # the VZVirtioSocketConnection behind the agent socket: kept while it is used
        self.started = 0.0
        self.image_digest = ""
        self.has_disk = False
        self.settings: dict[str, Any] = {}
        self.can_save = can_save
        self._last_console = ""

    @property
    def host_confinement(self) -> dict[str, Any]:
        return {"vmm": NAME, "jailer": "none", "sandbox": "the framework's XPC service process, sandboxed by macOS"}

    def call(self, what: str, start: Callable[[Callable[..., None]], None]) -> tuple[Any, ...]:
        """Run `start(handler)` on the VM's queue and wait for its completion handler."""
        waiter = _Waiter(what)
        self.fw.on_queue(self.queue, lambda: start(waiter.handler))
        return waiter.wait()

    def connect_agent(self, timeout: float) -> None:
        deadline = self.started + timeout
        while True:
            try:
                sock = self._connect_once()
                break
            except VmError as problem:
                if time.monotonic() >= deadline:
                    raise BootFailed(f"the guest agent never answered on vsock: {problem.message}",
                                     self.console_tail()) from None
                time.sleep(0.1)
        client = AgentClient(sock, alive=self.check_alive)
        try:
            info = client.hello(max(0.1, deadline - time.monotonic()))
        except (AgentUnresponsive, GuestCrashed) as silent:
            raise BootFailed(f"the guest did not become ready within {timeout:.0f}s ({silent.message})",
                             self.console_tail()) from None
        self.attach(client, info, time.monotonic() - self.started)

    def _connect_once(self) -> socket.socket:
        found: list[Any] = []
        self.fw.on_queue(self.queue, lambda: found.extend(self.machine.socketDevices()))
        if not found:
            raise VmError("the VM has no socket device")
        connection, _error = self.call(f"connecting to vsock port {AGENT_VSOCK_PORT}",
                                       lambda done: found[0].connectToPort_completionHandler_(AGENT_VSOCK_PORT, done))
        self.connection = connection
        return socket.socket(fileno=os.dup(connection.fileDescriptor()))

    def check_alive(self) -> None:
        state: list[Any] = []
        self.fw.on_queue(self.queue, lambda: state.append(self.machine.state() if self.machine else None))
        if state and state[0] in (self.fw.vz.VZVirtualMachineStateStopped, self.fw.vz.VZVirtualMachineStateError):
            raise GuestCrashed(f"VM {self.id}: the virtual machine stopped", self.console_tail())

    def console_tail(self, lines: int = 30) -> str:
        tail = read_console_tail(self.run_dir / CONSOLE_LOG, lines)
        return tail if tail is not None else "\n".join(self._last_console.splitlines()[-lines:])

    def _terminate(self) -> None:
        self._last_console = self.console_tail(200)
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.fw.on_queue(self.queue, self.connection.close)
        if self.machine is not None:
            can_stop: list[bool] = []
            self.fw.on_queue(self.queue, lambda: can_stop.append(bool(self.machine.canStop())))
            if can_stop and can_stop[0]:
                with contextlib.suppress(VmError):
                    self.call("stopping the VM", self.machine.stopWithCompletionHandler_)
        self.machine = None
        shutil.rmtree(self.run_dir, ignore_errors=True)


class AppleHypervisor:
    """A SnapshotBackend on macOS 14+ (arm64); elsewhere on macOS, a backend without snapshots' use."""

    name = NAME

    def __init__(self, config: ProjectConfig | None = None, *, state_dir: Path | None = None,
                 framework: Callable[[], Framework] = load_framework, mac: MacHost | None = None) -> None:
        if state_dir is None:
            state_dir = config.state_dir if config is not None else Path.cwd() / ".lg"
        self.state_dir = state_dir
        self.framework = framework
        self.mac = mac

    def host(self) -> MacHost:
        return self.mac or MacHost.this()

    # --- probe ---

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        mac = self.host()
        problems: list[Problem] = []
        if mac.system != "Darwin":
            problems.append(Problem(f"Apple's Virtualization.framework needs a macOS host, this is {mac.system}",
                                    "use hypervisor qemu, firecracker or cloud-hypervisor on Linux", fatal=True))
        else:
            if mac.version() < (12,):
                problems.append(Problem(f"macOS {mac.release} is too old: lg needs macOS 12 or later",
                                        "upgrade macOS", fatal=True))
            try:
                self.framework()
            except EnvironmentUnfit as missing:
                problems.append(Problem(missing.message, missing.fix, fatal=True))
            if mac.entitled is False:
                problems.append(Problem(f"the Python running lg lacks the {ENTITLEMENT} entitlement",
                                        ENTITLEMENT_FIX, fatal=True))
            if not mac.can_save:
                problems.append(Problem("VM snapshots need macOS 14 on Apple silicon: every VM cold-boots",
                                        "use a Mac with Apple silicon on macOS 14 or later for warm restores"))
        fatal = any(problem.fatal for problem in problems)
        kvm = KvmStatus(mac.system == "Darwin", None, "Apple's Hypervisor.framework (no /dev/kvm on macOS)")
        return HostProbe(NAME, None, mac.release or None, kvm, None if fatal else "hvf", tuple(problems))

    # --- boot ---

    def boot(self, spec: VmSpec) -> AppleVm:
        vm = self._new_vm(spec)
        try:
            vm.machine = self._machine(vm, self._configuration(vm, spec))
            vm.started = time.monotonic()
            vm.call("starting the VM", vm.machine.startWithCompletionHandler_)
            vm.connect_agent(spec.boot_timeout)
        except BaseException:
            vm.destroy()
            raise
        return vm

    def _new_vm(self, spec: VmSpec) -> AppleVm:
        if spec.network is not None:
            raise EnvironmentUnfit("network allow-lists are implemented for the QEMU backend only",
                                   fix="use `hypervisor: qemu` for a step with network access")
        framework = self.framework()
        parent = spec.run_dir if spec.run_dir is not None else self.state_dir / "vms"
        vm_id = f"vm-{secrets.token_hex(5)}"
        vm = AppleVm(vm_id, create_run_dir(parent, vm_id), framework, self.host().can_save)
        vm.image_digest = spec.image.digest
        return vm

    def _configuration(self, vm: AppleVm, spec: VmSpec, disk: Path | None = None) -> Any:
        vz, url = vm.fw.vz, vm.fw.file_url
        cmdline = " ".join((kernel_cmdline(spec.image, spec.hostname, None).replace("console=ttyS0", "console=hvc0"),
                            agent_boot_arg(AGENT_VSOCK_PORT)))
        loader = vz.VZLinuxBootLoader.alloc().initWithKernelURL_(url(str(spec.image.kernel)))
        loader.setInitialRamdiskURL_(url(str(spec.image.initrd)))
        loader.setCommandLine_(cmdline)
        config = vz.VZVirtualMachineConfiguration.alloc().init()
        config.setBootLoader_(loader)
        config.setCPUCount_(spec.vcpus)
        config.setMemorySize_(spec.memory_mib << 20)
        attachment, error = vz.VZFileSerialPortAttachment.alloc().initWithURL_append_error_(
            url(str(vm.run_dir / CONSOLE_LOG)), False, None)
        _check(attachment, error, "the console file")
        console = vz.VZVirtioConsoleDeviceSerialPortConfiguration.alloc().init()
        console.setAttachment_(attachment)
        config.setSerialPorts_([console])
        if disk is None and spec.image.rootfs is not None:
            disk = vm.run_dir / DISK
            private_disk(spec.image.rootfs, disk)
        if disk is not None:
            vm.has_disk = True
            storage, error = vz.VZDiskImageStorageDeviceAttachment.alloc().initWithURL_readOnly_error_(
                url(str(disk)), False, None)
            _check(storage, error, "the root disk")
            config.setStorageDevices_([vz.VZVirtioBlockDeviceConfiguration.alloc().initWithAttachment_(storage)])
        config.setSocketDevices_([vz.VZVirtioSocketDeviceConfiguration.alloc().init()])
        config.setEntropyDevices_([vz.VZVirtioEntropyDeviceConfiguration.alloc().init()])
        ok, error = config.validateWithError_(None)
        if not ok:
            raise BootFailed(f"Virtualization.framework refused the configuration: {_describe(error)}")
        vm.settings = {"vcpus": spec.vcpus, "memory_mib": spec.memory_mib, "cmdline": cmdline}
        return config

    def _machine(self, vm: AppleVm, config: Any) -> Any:
        made: list[Any] = []
        vm.fw.on_queue(vm.queue, lambda: made.append(
            vm.fw.vz.VZVirtualMachine.alloc().initWithConfiguration_queue_(config, vm.queue)))
        return made[0]

    # --- snapshots ---

    def fingerprint(self) -> str:
        mac = self.host()
        return f"apple {mac.release} {mac.machine}"

    def boot_signature(self, spec: VmSpec) -> str:
        return json.dumps({"backend": NAME, "image": spec.image.digest, "vcpus": spec.vcpus,
                           "memory_mib": spec.memory_mib, "disk": spec.image.rootfs is not None}, sort_keys=True)

    def save_snapshot(self, vm: Vm, path: Path) -> None:
        if not isinstance(vm, AppleVm):
            raise VmError(f"VM {vm.id} was not booted by the Apple backend: it cannot save it")
        if not vm.can_save:
            raise EnvironmentUnfit("saving a VM's state needs macOS 14 on Apple silicon",
                                   fix="set pool.snapshots: false in lg.yaml on this Mac")
        path.mkdir(parents=True, exist_ok=True)
        vm.call("pausing the VM", vm.machine.pauseWithCompletionHandler_)
        url = vm.fw.file_url(str(path / STATE))
        vm.call("saving the VM's state", lambda done: vm.machine.saveMachineStateToURL_completionHandler_(url, done))
        if vm.has_disk:
            private_disk(vm.run_dir / DISK, path / DISK)
        meta = {"backend": NAME, "image_digest": vm.image_digest, "disk": vm.has_disk, **vm.settings,
                "saved_at": time.time()}
        (path / META).write_text(json.dumps(meta, indent=2))

    def restore(self, snapshot: Path, spec: VmSpec) -> AppleVm:
        try:
            meta = json.loads((snapshot / META).read_text())
        except (OSError, ValueError) as error:
            raise BootFailed(f"{snapshot} is not a snapshot: {error}") from error
        if meta.get("backend") != NAME or meta.get("image_digest") != spec.image.digest:
            raise BootFailed(f"{snapshot} is not an Apple snapshot of image {spec.image.digest}")
        vm = self._new_vm(spec)
        try:
            disk = None
            if meta.get("disk"):
                disk = vm.run_dir / DISK
                private_disk(snapshot / DISK, disk)
            config = self._configuration(vm, spec, disk)
            ok, refusal = config.validateSaveRestoreSupportWithError_(None)
            if not ok:
                raise BootFailed(f"this configuration cannot be restored: {_describe(refusal)}")
            vm.machine = self._machine(vm, config)
            vm.started = time.monotonic()
            url = vm.fw.file_url(str(snapshot / STATE))
            vm.call("restoring the VM's state",
                    lambda done: vm.machine.restoreMachineStateFromURL_completionHandler_(url, done))
            vm.call("resuming the VM", vm.machine.resumeWithCompletionHandler_)
            vm.connect_agent(spec.boot_timeout)
            vm.resync()
        except VmError as error:
            vm.destroy()
            raise BootFailed(f"VM {vm.id}: cannot restore {snapshot}: {error.message}") from None
        except BaseException:
            vm.destroy()
            raise
        return vm


def _check(made: Any, error: Any, what: str) -> None:
    if made is None:
        raise BootFailed(f"Virtualization.framework cannot open {what}: {_describe(error)}")

