"""The backend-neutral VM interface: what the runner and the pool use, whatever the hypervisor.

Shaped after pyinfra's connectors and tox's execute API: a `Hypervisor` probes the host and boots a
`VmSpec` into a `Vm`; a `Vm` is a context manager that always destroys itself, and runs `ExecRequest`s into
`ExecResult`s. Backends (QEMU today; Firecracker, Cloud Hypervisor, Apple Virtualization later) differ in how
they boot and reach the guest, not in this interface: most inherit `lg.vm.base.AgentVm`, which speaks the
guest agent's protocol over whatever stream the backend connects.

What every backend must do is small (`Hypervisor`: name, probe, boot; `Vm`). What only some can do is an
optional capability, a protocol of its own that callers test for with isinstance, never with getattr:
`SnapshotBackend` (save a VM, restore clones of it: the pool's templates), `HandOverVm` (give the agent
connection to another process: the pool daemon), `IdentityVm` (a fresh hostname and machine id at lease time)
and `ProcessVm` (the VMM is a host process, which the pool renices). Backends are found by name in
lg.vm.registry; lg.testing.fake is a backend for tests that implements the contract without a VM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

from lg.errors import ExitCode, LgError
from lg.model import FileChange

if TYPE_CHECKING:
    import socket

Accelerator = Literal["kvm", "hvf", "tcg", "none"]
"""What ran a VM: hardware virtualisation (KVM on Linux, Apple's Hypervisor.framework on macOS), software
emulation, or nothing at all (lg.testing.fake runs commands on the host; no production backend reports it)."""
ACCELERATOR_CHOICES = ("auto", "kvm", "tcg")

OutputCallback = Callable[[str, bytes], None]
"""Receives ("stdout" | "stderr", chunk) as the guest produces output."""


class GuestImage(Protocol):
    """What booting needs from a built image (`lg.images.store.BuiltImage` satisfies it)."""

    @property
    def name(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def kernel(self) -> Path: ...

    @property
    def initrd(self) -> Path: ...

    @property
    def rootfs(self) -> Path | None: ...

    @property
    def kernel_args(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class EgressRule:
    """One allowed destination: an IPv4 network (a host is a /32) and, optionally, ports of one protocol."""

    network: str  # "10.1.2.3/32", "192.0.2.0/24"
    protocol: Literal["tcp", "udp", "any"] = "tcp"
    ports: tuple[int, ...] = ()  # empty: every port (of the protocol)


@dataclass(frozen=True)
class NetworkSpec:
    """An egress allow-list (lg.vm.network): the VM gets one NIC whose traffic only reaches these destinations.
    `hosts` are names the guest may resolve (answered from its /etc/hosts: the guest has no DNS server)."""

    allow: tuple[EgressRule, ...]
    hosts: tuple[tuple[str, str], ...] = ()  # (name, IPv4 address)


@dataclass(frozen=True)
class VmSpec:
    image: GuestImage
    vcpus: int = 1
    memory_mib: int = 256
    accelerator: str = "auto"  # auto | kvm | tcg
    run_dir: Path | None = None  # parent of the VM's private run directory; default <state_dir>/vms
    hostname: str = "lg-guest"
    boot_timeout: float = 120.0  # seconds from VMM start to the agent's first answer
    network: NetworkSpec | None = None  # None: no network device at all
    # Back guest RAM with this file, shared with it (a template: its snapshot then leaves RAM in the file,
    # and clones map the file copy-on-write instead of loading it). None: anonymous memory.
    ram_file: Path | None = None


@dataclass(frozen=True)
class ExecRequest:
    """One command for the guest: an argv, or a script for /bin/sh -c."""

    argv: tuple[str, ...] | None = None
    script: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    uid: int | None = None
    gid: int | None = None
    timeout: float | None = None
    stdin: bytes | None = None
    # Applied by the agent before the command runs (lg.guest.confine): keep_caps, no_new_privs, and cgroup
    # limits pids, memory_bytes, cpu_percent. None: run unconfined (lg's own housekeeping commands).
    confine: Mapping[str, Any] | None = None
    mkdirs: tuple[str, ...] = ()  # absolute guest directories created (owned by uid/gid) before it starts

    def __post_init__(self) -> None:
        if (self.argv is None) == (self.script is None):
            raise ValueError("ExecRequest needs exactly one of argv and script")
        if self.argv is not None and not self.argv:
            raise ValueError("ExecRequest.argv must not be empty")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("ExecRequest.timeout must be positive")

    def __repr__(self) -> str:
        # Values of the environment may be secrets: show the names only.
        what = f"argv={self.argv!r}" if self.argv is not None else f"script=<{len(self.script or '')} chars>"
        stdin = f", stdin=<{len(self.stdin)} bytes>" if self.stdin is not None else ""
        return (f"ExecRequest({what}, env_keys={sorted(self.env)!r}, cwd={self.cwd!r}, "
                f"uid={self.uid!r}, timeout={self.timeout!r}{stdin})")


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    timed_out: bool
    duration: float  # seconds, measured by the agent
    confinement: Mapping[str, Any] | None = None  # what the guest kernel enforced, and limits hit

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True)
class TransferStats:
    bytes: int  # regular file content
    files: int  # files and links (not directories)
    seconds: float


@dataclass(frozen=True)
class AgentInfo:
    agent: str
    protocol: int
    kernel: str
    uptime: float  # guest seconds since boot when it first answered
    hostname: str


@dataclass(frozen=True)
class Problem:
    message: str
    fix: str | None = None
    fatal: bool = False  # VMs cannot run here until it is fixed (else: a warning, such as TCG for want of KVM)


@dataclass(frozen=True)
class KvmStatus:
    present: bool  # /dev/kvm exists and opens
    usable: bool | None  # a guest actually booted under it; None: not tested yet
    reason: str  # why not, or how we know


@dataclass(frozen=True)
class HostProbe:
    backend: str
    binary: Path | None
    version: str | None
    kvm: KvmStatus
    auto_accelerator: Accelerator | None  # what accelerator=auto picks; None: cannot run VMs at all
    problems: tuple[Problem, ...] = ()

    @property
    def can_run(self) -> bool:
        return self.auto_accelerator is not None


class Vm(Protocol):
    """A running guest whose agent answered. Always use it as a context manager (or call destroy())."""

    @property
    def id(self) -> str: ...

    @property
    def accelerator(self) -> Accelerator: ...

    @property
    def boot_seconds(self) -> float: ...

    @property
    def host_confinement(self) -> Mapping[str, Any]:
        """How the VMM process itself is confined on the host (cgroup, chroot, sandbox), as applied."""
        ...

    @property
    def network_state(self) -> Mapping[str, Any] | None:
        """The egress allow-list as applied, with the attempts it denied (None: no network device)."""
        ...

    @property
    def agent_info(self) -> AgentInfo: ...

    def exec(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecResult: ...

    def put_tree(
        self, host_dir: Path, guest_dir: str, exclude: Callable[[str], bool] | None = None,
        owner: tuple[int, int] | None = None,
    ) -> TransferStats:
        """Copy `host_dir`'s content into `guest_dir` (owned by `owner`, default root) and remember it as the
        baseline for `changes`."""
        ...

    def get_paths(self, guest_dir: str, relative_paths: list[str], dest_dir: Path) -> TransferStats:
        """Copy paths under `guest_dir` into `dest_dir` (refusing anything that would escape it)."""
        ...

    def changes(self, guest_dir: str) -> list[FileChange]:
        """What changed in `guest_dir` since it was put."""
        ...

    def resync(self) -> None:
        """Set the guest clock to the host's and reseed its RNG (after a snapshot restore)."""
        ...

    def console_tail(self, lines: int = 30) -> str: ...

    def destroy(self) -> None:
        """Stop the VM and remove everything it left on the host. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None: ...


class Hypervisor(Protocol):
    """The contract every backend meets. Constructed by its lg.vm.registry factory from the project config."""

    @property
    def name(self) -> str:
        """Its key in lg.vm.registry.HYPERVISORS (and in the pool's keys)."""
        ...

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        """What this host can do. With an image, an untested KVM is tested by booting it (and cached)."""
        ...

    def boot(self, spec: VmSpec) -> Vm:
        """A booted VM whose agent answered, or an error carrying the guest's last console lines."""
        ...


# --- optional capabilities ------------------------------------------------------------------------------
# Their members are methods (and a backend's name): isinstance() on a runtime protocol calls hasattr() on every
# member in Python 3.11, which would run a property, and a property of a dead VM may raise.


@runtime_checkable
class SnapshotBackend(Hypervisor, Protocol):
    """A backend that saves a running VM's whole state and starts independent clones of it: the pool builds
    template snapshots with it and restores VMs from them instead of booting them."""

    def fingerprint(self) -> str:
        """What saved state depends on beyond the VmSpec (VMM binary and version, host kernel and CPU): a
        template saved under another fingerprint is stale."""
        ...

    def boot_signature(self, spec: VmSpec) -> str:
        """What `boot(spec)` would start (a VMM command line, say): a snapshot restores only under the one it
        was saved with, so it is part of a template's key."""
        ...

    def save_snapshot(self, vm: Vm, path: Path) -> None:
        """Save `vm` (booted by this backend) under the directory `path`; the VM stays paused afterwards.
        `vm.destroy()` is still the caller's."""
        ...

    def restore(self, snapshot: Path, spec: VmSpec) -> Vm:
        """A new VM resumed from a snapshot saved by `save_snapshot`, with its clock and RNG already resynced
        with the host. The snapshot may be restored any number of times; it is never changed."""
        ...


@dataclass(frozen=True)
class VmHandover:
    """Where another process finds a VM whose VMM stays with this one (the pool daemon's answer to a lease)."""

    run_dir: Path
    agent_socket: Path  # connect here when the open connection could not be passed
    console_log: Path
    pid: int | None  # the VMM's process

    def to_json(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "agent_socket": str(self.agent_socket),
                "console_log": str(self.console_log), "pid": self.pid}


@runtime_checkable
class HandOverVm(Protocol):
    """A VM whose agent connection another process can take over (the pool daemon leases VMs this way)."""

    def hand_over_channel(self) -> socket.socket | None:
        """The open agent connection itself, to pass as a file descriptor (None: the other process connects
        afresh). This process stops using it."""
        ...

    def handover(self) -> VmHandover:
        """Let go of the agent connection and say where the VM is; this process keeps (and destroys) the VMM."""
        ...


@runtime_checkable
class IdentityVm(Protocol):
    """A VM that takes a new identity at lease time: a VM restored from a template starts as the template, with
    its hostname, machine id, clock and RNG state."""

    def set_identity(self, hostname: str, machine_id: str) -> Mapping[str, Any]:
        """Set hostname and machine id, the host's clock and new entropy; what the guest now reports."""
        ...


@runtime_checkable
class ProcessVm(Protocol):
    """A VM run by a VMM process on this host (its scheduling priority can be changed)."""

    def vmm_pid(self) -> int | None:
        """The VMM's pid; None once it has stopped."""
        ...


# --- errors -------------------------------------------------------------------------------------------


class VmError(LgError):
    """A VM that failed: what happened, and the guest's last console lines when they help."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console

    def __str__(self) -> str:
        if not self.console.strip():
            return self.message
        tail = "\n".join(f"  | {line}" for line in self.console.rstrip().splitlines())
        return f"{self.message}\n  last console lines:\n{tail}"


class BootFailed(VmError):
    """The guest did not come up (VMM refused to start, kernel panicked, agent never answered)."""

    exit_code = ExitCode.ENVIRONMENT


class GuestCrashed(VmError):
    """The VM died while in use (a guest kernel panic, the VMM killed)."""


class AgentFailure(VmError):
    """The agent answered a request with an error."""

    def __init__(self, message: str, code: str, console: str = "") -> None:
        super().__init__(message, console)
        self.code = code


class AgentUnresponsive(VmError):
    """The agent went silent or spoke something that is not the protocol."""
