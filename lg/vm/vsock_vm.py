"""What the Firecracker and Cloud Hypervisor backends share: a KVM-only VMM binary on this host (probed for its
version and for /dev/kvm), one VMM process per VM in a private run directory, and the guest agent reached over
hybrid vsock (lg.vm.channel.HybridVsockConnector: `CONNECT <port>` on the VMM's vsock socket, `OK <port>` back).

The guest learns that its agent listens on vsock from the kernel command line (`lg.agent=vsock:<port>`, read by
lg.guest.agent): the same image serves QEMU (virtio-serial) and these (vsock), given the vsock modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit
from lg.vm import host
from lg.vm.agent_client import AgentClient
from lg.vm.api import (
    Accelerator,
    AgentUnresponsive,
    BootFailed,
    GuestCrashed,
    HostProbe,
    KvmStatus,
    Problem,
    VmSpec,
)
from lg.vm.base import AgentVm
from lg.vm.channel import ChannelError, HybridVsockConnector
from lg.vm.console import read_console_tail
from lg.vm.rundir import write_owner
from lg.vm.unix_http import ApiError
from lg.vm.vmm_binary import VmmBinary

AGENT_VSOCK_PORT = 1024  # the guest agent's vsock port (lg.agent=vsock:1024 on the kernel command line)
GUEST_CID = 3  # the lowest CID a guest may have; each VMM has its own vsock device, so every VM can use it
CONSOLE_LOG = "console.log"
VMM_LOG = "vmm.log"
KILL_GRACE = 2.0


def agent_boot_arg(port: int = AGENT_VSOCK_PORT) -> str:
    return f"lg.agent=vsock:{port}"


# --- probing ----------------------------------------------------------------------------------------------


def probe_kvm_vmm(binary: VmmBinary, extra: tuple[Problem, ...] = ()) -> HostProbe:
    """A VMM with no software emulation: it runs VMs here only with its binary and a KVM device that opens.
    Whether guests actually boot under that KVM shows at the first boot (it fails with the console then)."""
    path, version = binary.path(), binary.version()
    problems = list(extra)
    if path is None:
        problems.append(Problem(f"{binary.name} is not installed", binary.install_fix, fatal=True))
    present, reason = host.kvm_device_status()
    if not present:
        problems.append(Problem(f"{binary.backend} needs KVM and {reason}",
                                "use a Linux host with (nested) KVM enabled; QEMU runs without it (TCG)",
                                fatal=True))
    kvm = KvmStatus(present, None if present else False,
                    f"{reason}; untested: a guest's first boot shows whether KVM runs it" if present else reason)
    auto: Accelerator | None = "kvm" if path is not None and present else None
    return HostProbe(binary.backend, path, version, kvm, auto, tuple(problems))


# --- the VM -----------------------------------------------------------------------------------------------


class VsockVm(AgentVm):
    """A VM run by one VMM process whose guest agent listens on vsock. The backend starts the process (`start`),
    configures and boots it through its API, then calls `wait_ready`."""

    backend = "vmm"

    def __init__(self, vm_id: str, run_dir: Path, files_dir: Path) -> None:
        super().__init__(vm_id, "kvm")
        self.run_dir = run_dir  # everything of this VM on the host; removed by destroy()
        self.files_dir = files_dir  # the VMM's own view: its working directory (or its jail's root)
        self.process: subprocess.Popen[bytes] | None = None
        self.vmm_process_id: int | None = None  # the VMM itself (not the jailer that started it)
        self.started = 0.0
        self.image_digest = ""
        self.confinement: dict[str, Any] = {"vmm": self.backend, "jailer": "none"}
        self._last_console = ""

    # --- process ---

    def start(self, argv: list[str], cwd: Path) -> None:
        self.started = time.monotonic()
        die_with_parent = host.die_with_parent(os.getpid())
        with (self.run_dir / VMM_LOG).open("wb") as log, (self.run_dir / CONSOLE_LOG).open("wb") as console:
            self.process = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=console, stderr=log,
                start_new_session=True,  # Ctrl-C in the terminal is lg's to handle
                preexec_fn=die_with_parent,  # noqa: PLW1509 - prctl only
                close_fds=True,
            )
        self.vmm_process_id = self.process.pid
        write_owner(self.run_dir, self.process.pid, self.backend)

    def adopt_vmm_pid(self, pid: int) -> None:
        """The VMM is another process than the one started (the jailer's child in its own pid namespace)."""
        self.vmm_process_id = pid
        write_owner(self.run_dir, pid, self.backend)

    def vmm_pid(self) -> int | None:
        pid = self.vmm_process_id
        return pid if pid is not None and host.process_alive(pid) else None

    def check_alive(self) -> None:
        if self.process is None:
            return
        if self.vmm_process_id == self.process.pid:
            if self.process.poll() is None:
                return
            code = self.process.returncode
            detail = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        else:
            if self.vmm_process_id is not None and host.process_alive(self.vmm_process_id):
                return
            detail = "exited"
        log = self.vmm_log_tail()
        raise GuestCrashed(f"VM {self.id}: {self.backend} {detail}" + (f": {log}" if log else ""),
                           self.console_tail())

    def vmm_log_tail(self) -> str:
        try:
            text = (self.run_dir / VMM_LOG).read_text(errors="replace")
        except OSError:
            return ""
        return " / ".join(line.strip() for line in text.strip().splitlines()[-5:])

    # --- the agent over vsock ---

    @property
    def vsock_socket(self) -> Path:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        deadline = self.started + timeout
        try:
            sock = self._connect(deadline)
            client = AgentClient(sock, alive=self.check_alive, lost=self.channel_lost)
            info = client.hello(max(0.1, deadline - time.monotonic()))
        except GuestCrashed as crash:
            raise BootFailed(f"the guest did not boot: {crash.message}", crash.console) from None
        except AgentUnresponsive as silent:
            console = self.console_tail()
            why = "its console stayed empty" if not console.strip() else silent.message
            raise BootFailed(f"the guest did not become ready within {timeout:.0f}s ({why})", console) from None
        self.attach(client, info, time.monotonic() - self.started)

    def _connect(self, deadline: float) -> socket.socket:
        """Connect through the VMM's vsock socket; until the agent listens, the VMM closes each attempt."""
        connector = HybridVsockConnector(self.vsock_socket, AGENT_VSOCK_PORT)
        while True:
            self.check_alive()
            try:
                return connector.connect(timeout=min(1.0, max(0.05, deadline - time.monotonic())))
            except ChannelError as problem:
                if time.monotonic() >= deadline:
                    raise AgentUnresponsive(f"the guest agent never answered on vsock: {problem}") from None
                time.sleep(0.05)

    def reconnect(self, timeout: float) -> None:
        """A new agent connection (a snapshot's resume closes every vsock connection; the agent's listener
        stays and accepts the next)."""
        self.detach_agent()
        self.started = time.monotonic()
        self.wait_ready(timeout)

    def channel_lost(self) -> None:
        if self.process is not None and self.vmm_process_id == self.process.pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=KILL_GRACE)
        self.check_alive()

    # --- the rest of the Vm interface ---

    @property
    def host_confinement(self) -> Mapping[str, Any]:
        return dict(self.confinement)

    def console_tail(self, lines: int = 30) -> str:
        tail = read_console_tail(self.run_dir / CONSOLE_LOG, lines)
        return tail if tail is not None else "\n".join(self._last_console.splitlines()[-lines:])

    def _terminate(self) -> None:
        self._last_console = self.console_tail(200)
        self._kill()
        self.release_host_resources()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def release_host_resources(self) -> None:
        """What the VMM left outside its run directory (a jailer's cgroup): the backend's to remove."""

    def _kill(self) -> None:
        pid = self.vmm_process_id
        if pid is not None and (self.process is None or pid != self.process.pid) and host.process_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10.0)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=10.0)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.1)


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while host.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link of `source` (same file system), else a copy. Only for files nobody writes."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def private_disk(source: Path, target: Path) -> None:
    """A private, writable copy of a raw disk image, sparse and reflinked where the file system can (these VMMs
    take raw files: no copy-on-write overlay such as QEMU's qcow2)."""
    done = subprocess.run(["cp", "--reflink=auto", "--sparse=always", str(source), str(target)],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise BootFailed(f"cannot copy the root disk {source}: {done.stderr.strip()}")
    target.chmod(0o600)


# --- what both backends do the same way around a boot or a restore -----------------------------------------


@contextlib.contextmanager
def destroyed_on_failure(vm: VsockVm, failure: str) -> Iterator[None]:
    """Destroy `vm` if the block fails: nothing half-started outlives a failed boot or restore. The VMM's API
    refusing a call becomes BootFailed naming `failure` and the VMM's message, with the console's tail."""
    try:
        yield
    except ApiError as error:
        vm.destroy()
        raise BootFailed(f"VM {vm.id}: {failure}: {error.message}", vm.console_tail()) from None
    except BaseException:
        vm.destroy()
        raise


def refuse_kvm_only_gaps(spec: VmSpec, binary: VmmBinary, title: str) -> None:
    """Refuse what a KVM-only VMM backend of lg cannot give: no binary, TCG, network allow-lists."""
    if binary.path() is None:
        raise EnvironmentUnfit(f"{binary.name} is not installed", fix=binary.install_fix)
    if spec.accelerator == "tcg":
        raise EnvironmentUnfit(f"{title} runs guests under KVM only, and accelerator tcg was asked for",
                               fix="use `hypervisor: qemu` for TCG, or `accelerator: auto`")
    if spec.network is not None:
        raise EnvironmentUnfit("network allow-lists are implemented for the QEMU backend only",
                               fix="use `hypervisor: qemu` for a step with network access")


@dataclass(frozen=True)
class SnapshotMeta:
    """lg's own record beside a VMM's snapshot files: what a restore checks before it trusts them."""

    file_name: str
    backend: str
    title: str  # the VMM's name in messages
    api_version: str

    def write(self, path: Path, image_digest: str, has_disk: bool, signature: str) -> None:
        meta = {"backend": self.backend, "api": self.api_version, "image_digest": image_digest, "disk": has_disk,
                "signature": signature, "saved_at": time.time()}
        (path / self.file_name).write_text(json.dumps(meta, indent=2))

    def read(self, snapshot: Path, spec: VmSpec) -> dict[str, Any]:
        """The record, refused unless this backend saved it from the image `spec` boots."""
        try:
            meta = json.loads((snapshot / self.file_name).read_text())
        except (OSError, ValueError) as error:
            raise BootFailed(f"{snapshot} is not a snapshot: {error}") from error
        if not isinstance(meta, dict) or meta.get("backend") != self.backend:
            raise BootFailed(f"{snapshot} is not a {self.title} snapshot")
        if meta.get("image_digest") != spec.image.digest:
            raise BootFailed(f"snapshot {snapshot} was taken from image {meta.get('image_digest')}, "
                             f"not {spec.image.digest}")
        return meta
