"""FakeHypervisor: a backend with no VM at all, so that tests drive the runner, the pool and the engine in
milliseconds. It provides NO ISOLATION WHATSOEVER and is for tests only.

A fake VM is a temporary directory standing for the guest's filesystem (lg.testing.guest_root): guest
`/workspace` is `<vm>/root/workspace`. `exec` runs the command on the host, as the test's own user, with its
working directory, `mkdirs` and the guest paths lg passes in its argv and env mapped into that directory (and
TMPDIR there), its env, its timeout (the process group is killed: `timed_out`), its output streamed through
the callback, and its exit code or signal as the guest agent reports them (lg.testing.host_exec); or a scripted
`handler` answers instead. `put_tree`, `get_paths` and `changes` use the code the agent and the host use
(lg.guest.tarsafe, lg.guest.manifest, lg.vm.base.file_change), so created, modified and deleted files, their
modes and their hashes are exactly what a real VM reports. Snapshots copy the directory.

What it cannot do, and does not pretend to (lg.testing.conformance declares it: CAPABILITIES):
- commands see the host's filesystem: a script that writes `/workspace/x` literally, or runs `pwd`, meets the
  host's paths (write scripts with relative paths, or $LG_WORKSPACE, $LG_OUTPUT, $HOME, which are mapped);
- uid, gid and `confine` are not applied, and every result that asked for them says so in `confinement`
  (`enforced: False`); the VM reports no guest kernel (accelerator "none") and no VMM process.

Guest paths are mapped so that lg itself cannot make a command write outside the VM's directory (a relative
guest path, `..`, or a symlink leading out is refused). The commands are the test's own and run with the
test's rights: this is not a security boundary, and nothing untrusted may ever run through it.
"""

from __future__ import annotations

import json
import platform
import secrets
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from lg.guest import manifest, tarsafe
from lg.guest.files import check_guest_dir
from lg.guest.protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError
from lg.model import FileChange, PoolSettings
from lg.pool.pool import WarmPool
from lg.testing.conformance import Capability
from lg.testing.guest_root import GuestRoot
from lg.testing.host_exec import kill_group, run_on_host
from lg.vm.api import (
    Accelerator,
    AgentFailure,
    AgentInfo,
    BootFailed,
    ExecRequest,
    ExecResult,
    GuestImage,
    HostProbe,
    KvmStatus,
    OutputCallback,
    Problem,
    TransferStats,
    Vm,
    VmError,
    VmSpec,
)
from lg.vm.base import AgentVm, file_change
from lg.vm.console import read_console_tail

NAME = "fake"
CAPABILITIES = frozenset({Capability.SNAPSHOTS})
"""What lg.testing.conformance may hold the fake to beyond the contract every backend meets."""

SNAPSHOT_META = "snapshot.json"
SNAPSHOT_ROOT = "root"
FORMAT = 1  # of a fake snapshot; part of the fingerprint
SPOOL_BYTES = 8 << 20  # a transfer's tar stream stays in memory up to this size

ExecHandler = Callable[["FakeVm", ExecRequest, OutputCallback | None], ExecResult | None]
"""Scripts exec results: called for every exec (lg's own housekeeping commands included); returns the result,
or None to run the command for real. It may write into `vm.host_path(...)`, call `on_output`, or raise (a
GuestCrashed, say) as a real VM would."""


class FakeHypervisor:
    """A SnapshotBackend whose VMs are directories. `base_dir` holds them when a spec gives no `run_dir`."""

    name = NAME

    def __init__(self, base_dir: Path | None = None, *, handler: ExecHandler | None = None) -> None:
        self.base_dir = base_dir or Path(tempfile.gettempdir())
        self.handler = handler
        self.booted: list[FakeVm] = []  # every VM made, booted or restored, in order

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        reason = "not used: lg.testing.fake runs commands on the host"
        return HostProbe(NAME, None, None, KvmStatus(False, None, reason), "none",
                         (Problem("lg.testing.fake isolates nothing: for tests only"),))

    def boot(self, spec: VmSpec) -> FakeVm:
        started = time.monotonic()
        vm = self._new_vm(spec)
        for directory in ("tmp", "root"):  # the guest's /tmp and root's HOME
            vm.host_path(f"/{directory}").mkdir()
        vm.booted(time.monotonic() - started, "booted")
        return vm

    # --- SnapshotBackend ---

    def fingerprint(self) -> str:
        return f"lg.testing.fake format {FORMAT}"

    def boot_signature(self, spec: VmSpec) -> str:
        return json.dumps({"image": spec.image.digest, "vcpus": spec.vcpus, "memory_mib": spec.memory_mib})

    def save_snapshot(self, vm: Vm, path: Path) -> None:
        if not isinstance(vm, FakeVm):
            raise VmError(f"VM {vm.id} was not made by lg.testing.fake: it cannot save it")
        path.mkdir(parents=True, exist_ok=True)
        shutil.copytree(vm.root.path, path / SNAPSHOT_ROOT, symlinks=True)
        meta = {"backend": NAME, "format": FORMAT, "image_digest": vm.image_digest,
                "manifests": {root: _manifest_to_json(taken) for root, taken in vm.manifests.items()}}
        (path / SNAPSHOT_META).write_text(json.dumps(meta))
        vm.paused = True  # as a real VM stays paused after its snapshot

    def restore(self, snapshot: Path, spec: VmSpec) -> FakeVm:
        started = time.monotonic()
        try:
            meta = json.loads((snapshot / SNAPSHOT_META).read_text())
        except (OSError, ValueError) as error:
            raise BootFailed(f"{snapshot} is not a snapshot: {error}") from error
        if meta.get("backend") != NAME or meta.get("format") != FORMAT:
            raise BootFailed(f"{snapshot} is not a snapshot of lg.testing.fake (format {FORMAT})")
        if meta.get("image_digest") != spec.image.digest:
            raise BootFailed(f"snapshot {snapshot} was taken from image {meta.get('image_digest')}, "
                             f"not {spec.image.digest}")
        vm = self._new_vm(spec, copy_of=snapshot / SNAPSHOT_ROOT)
        vm.manifests = {root: _manifest_from_json(taken) for root, taken in meta["manifests"].items()}
        vm.booted(time.monotonic() - started, f"restored from {snapshot}")
        return vm

    def _new_vm(self, spec: VmSpec, copy_of: Path | None = None) -> FakeVm:
        parent = spec.run_dir or self.base_dir
        parent.mkdir(parents=True, exist_ok=True)
        vm_dir = Path(tempfile.mkdtemp(prefix="vm-fake-", dir=parent))
        if copy_of is not None:
            shutil.copytree(copy_of, vm_dir / SNAPSHOT_ROOT, symlinks=True)
        else:
            (vm_dir / SNAPSHOT_ROOT).mkdir()
        vm = FakeVm(vm_dir, spec, self.handler)
        self.booted.append(vm)
        return vm


class FakeVm:
    """A fake VM (see the module): a Vm, and an IdentityVm. Use it as a context manager, or destroy() it."""

    def __init__(self, directory: Path, spec: VmSpec, handler: ExecHandler | None) -> None:
        self.directory = directory
        self.root = GuestRoot(directory / SNAPSHOT_ROOT)
        self.console_log = directory / "console.log"
        self.image_digest = spec.image.digest
        self.hostname = spec.hostname
        self.machine_id = ""
        self.handler = handler
        self.manifests: dict[str, manifest.Manifest] = {}  # by guest directory: what `changes` compares with
        self.executed: list[ExecRequest] = []  # every exec asked of it, in order
        self.paused = False
        self.destroyed = False
        self._id = f"vm-{secrets.token_hex(5)}"
        self._groups: set[int] = set()  # process groups of the commands running in it
        self._boot_seconds = 0.0

    def booted(self, seconds: float, how: str) -> None:
        self._boot_seconds = seconds
        self._console(f"lg.testing.fake: VM {self.id} {how} (no kernel, no isolation: commands run on the host)")

    def host_path(self, guest_path: str) -> Path:
        """Where a guest path is in this VM's directory (for tests and handlers that look or write there)."""
        return self.root.host_path(guest_path)

    # --- the Vm protocol ---

    @property
    def id(self) -> str:
        return self._id

    @property
    def accelerator(self) -> Accelerator:
        return "none"

    @property
    def boot_seconds(self) -> float:
        return self._boot_seconds

    @property
    def host_confinement(self) -> Mapping[str, Any]:
        return {}  # nothing confines it: the step record then shows the VMM's confinement as unknown

    @property
    def network_state(self) -> Mapping[str, Any] | None:
        return None

    @property
    def agent_info(self) -> AgentInfo:
        return AgentInfo(agent="lg.testing.fake", protocol=PROTOCOL_VERSION, kernel="", uptime=0.0,
                         hostname=self.hostname)

    def exec(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecResult:
        self._check_running()
        self.executed.append(request)
        scripted = self.handler(self, request, on_output) if self.handler is not None else None
        result = scripted if scripted is not None else self._run_on_host(request, on_output)
        ended = f"killed by signal {result.signal}" if result.signal is not None else f"exit {result.exit_code}"
        timed_out = " (timed out)" if result.timed_out else ""
        self._console(f"exec {(request.argv or ('/bin/sh',))[0]}: {ended}{timed_out}")  # never the script: secrets
        return result

    def _run_on_host(self, request: ExecRequest, on_output: OutputCallback | None) -> ExecResult:
        started: list[int] = []

        def running(group: int) -> None:
            started.append(group)
            self._groups.add(group)

        try:
            return run_on_host(self.root, request, on_output, running)
        finally:
            self._groups.difference_update(started)  # reaped: its id may be another process's from now on

    def put_tree(self, host_dir: Path, guest_dir: str, exclude: Callable[[str], bool] | None = None,
                 owner: tuple[int, int] | None = None) -> TransferStats:
        """As the agent's put: the host's tar stream of `host_dir`, extracted safely, then the manifest
        `changes` compares with. `owner` is not applied (the test's user owns everything)."""
        self._check_running()
        started = time.monotonic()
        dest = self.host_path(guest_dir)
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
            with tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                sent = tarsafe.add_tree(archive, str(host_dir), exclude)
            spool.seek(0)
            received = _agent_side(lambda: _extract(spool, dest, None))
        if received.files != sent.files:
            raise AgentFailure(f"the guest extracted {received.files} of {sent.files} files", ErrorCode.FAILED)
        self.manifests[check_guest_dir(guest_dir)] = manifest.take(str(dest))
        return TransferStats(sent.bytes, sent.files, time.monotonic() - started)

    def get_paths(self, guest_dir: str, relative_paths: list[str], dest_dir: Path) -> TransferStats:
        """As the agent's get and the host's extraction of it (which refuses what would escape `dest_dir`)."""
        self._check_running()
        started = time.monotonic()
        root = self.host_path(guest_dir)
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
            with tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                _agent_side(lambda: tarsafe.add_paths(archive, str(root), relative_paths))
            spool.seek(0)
            try:
                stats = _extract(spool, dest_dir, AgentVm.max_get_bytes)
            except (ProtocolError, tarfile.TarError) as problem:
                raise AgentFailure(f"refused what the guest sent back: {problem}", ErrorCode.UNSAFE) from problem
        return TransferStats(stats.bytes, stats.files, time.monotonic() - started)

    def changes(self, guest_dir: str) -> list[FileChange]:
        self._check_running()
        before = self.manifests.get(_agent_side(lambda: check_guest_dir(guest_dir)))
        if before is None:
            raise AgentFailure(f"guest agent: no manifest of {guest_dir}: put a workspace there first",
                               ErrorCode.NOT_FOUND)
        after = manifest.take(str(self.host_path(guest_dir)), previous=before)
        return [file_change(record) for record in manifest.diff(before, after)]

    def resync(self) -> None:
        self._check_running()  # the host's clock is the guest's already

    def console_tail(self, lines: int = 30) -> str:
        return read_console_tail(self.console_log, lines) or ""

    def destroy(self) -> None:
        """As a real VM's end: the commands it runs die with it (lg.runner.stopping stops a step this way)."""
        if not self.destroyed:
            self.destroyed = True
            for group in list(self._groups):
                kill_group(group)
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.destroy()

    # --- IdentityVm ---

    def set_identity(self, hostname: str, machine_id: str) -> Mapping[str, Any]:
        self._check_running()
        self.hostname, self.machine_id = hostname, machine_id
        return {"hostname": hostname, "machine_id": machine_id, "host_kernel": platform.release()}

    # --- internals ---

    def _check_running(self) -> None:
        if self.destroyed:
            raise VmError(f"VM {self.id} is not running")
        if self.paused:
            raise VmError(f"VM {self.id} is paused (its snapshot was saved): only destroy() is left")

    def _console(self, line: str) -> None:
        with self.console_log.open("a") as log:
            log.write(line + "\n")


T = TypeVar("T")


def _agent_side(work: Callable[[], T]) -> T:
    """Run what the guest agent would, answering its refusals as the host receives them."""
    try:
        return work()
    except ProtocolError as problem:
        raise AgentFailure(f"guest agent: {problem.message}", problem.code) from None


def _extract(stream: IO[bytes], dest: Path, max_bytes: int | None) -> tarsafe.TreeStats:
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        return tarsafe.Extractor(str(dest), max_bytes=max_bytes).extract_all(archive)


def _manifest_to_json(taken: manifest.Manifest) -> dict[str, list[Any]]:
    return {path: [e.kind, e.size, e.mode, e.sha256, e.target, list(e.key)] for path, e in taken.items()}


def _manifest_from_json(data: dict[str, list[Any]]) -> manifest.Manifest:
    return {path: manifest.Entry(kind, size, mode, sha256, target, (key[0], key[1], key[2], key[3]))
            for path, (kind, size, mode, sha256, target, key) in data.items()}


def fake_pool(hypervisor: FakeHypervisor, template_root: Path | None = None,
              settings: PoolSettings | None = None) -> WarmPool:
    """A warm pool whose every backend is `hypervisor` (whatever `hypervisor:` a step names), to pass as a
    RunRequest's `vms`. With a `template_root` its VMs are restored from template snapshots, as in production."""
    return WarmPool(lambda name: hypervisor, settings or PoolSettings(), template_root)
