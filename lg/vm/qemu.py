"""The QEMU backend: `-M microvm` guests booted from a PVH vmlinux, reached over virtio-serial.

One VM is one qemu process in its own session (terminal signals never reach it), confined with
`-sandbox on,...=deny`, killed by the kernel if lg dies (PR_SET_PDEATHSIG), with its files in a private run
directory that `destroy()` removes. Control goes through QMP; the agent channel is a virtio-serial port
bound to a unix socket. `accelerator: auto` tries KVM once per host with a short deadline (the verdict is
cached in the state directory) and falls back to TCG; the VM records which one actually ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit
from lg.model import ProjectConfig
from lg.vm import host, network, vmm_cgroup
from lg.vm.agent_client import AgentClient
from lg.vm.api import (
    Accelerator,
    AgentUnresponsive,
    BootFailed,
    GuestCrashed,
    GuestImage,
    HostProbe,
    KvmStatus,
    Problem,
    VmError,
    VmSpec,
)
from lg.vm.base import AgentVm
from lg.vm.channel import ChannelError, UnixSocketConnector
from lg.vm.qmp import QmpClient, QmpError
from lg.vm.rundir import create_run_dir, reap_leftovers, write_owner

QEMU_BINARY = "qemu-system-x86_64"
INSTALL_FIX = "apt-get install qemu-system-x86 (Debian/Ubuntu), then run `lg doctor` again"
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
KVM_PROBE_SECONDS = 15.0  # a guest that works under KVM answers in about a second
KVM_VERDICT_FILE = Path("vm") / "kvm-verdict.json"
AGENT_SOCKET = "agent.sock"
QMP_SOCKET = "qmp.sock"
CONSOLE_LOG = "console.log"
QEMU_LOG = "qemu.log"
OVERLAY = "overlay.qcow2"
RAM_BACKEND = "lg-ram"
CHANNEL_LOST_GRACE = 3.0  # seconds qemu gets to exit after the agent channel closed
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


# --- command line ---------------------------------------------------------------------------------------


def kernel_cmdline(image: GuestImage, hostname: str, tsc_khz: int | None) -> str:
    words = list(image.kernel_args)
    for required in ("console=ttyS0", "panic=-1"):
        if required.split("=")[0] + "=" not in " ".join(words):
            words.append(required)
    if tsc_khz:
        # microvm has no HPET or PM timer: without this the guest sometimes hangs calibrating the TSC.
        words += [f"tsc_early_khz={tsc_khz}", "tsc=reliable"]
    if not any(word.startswith("init_on_free=") for word in words):
        # Freed guest pages are zeroed: a snapshot then skips them (migration sends zero pages as a flag), which
        # took a template from 161 to 122 MB and a restored VM's RSS from 219 to 185 MiB; and no data outlives
        # the process that freed it, inside the guest.
        words.append("init_on_free=1")
    words.append(f"lg.hostname={safe_hostname(hostname)}")
    return " ".join(words)


def safe_hostname(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9-]", "-", name).strip("-")[:63]
    return cleaned or "lg-guest"


def qemu_argv(binary: str, spec: VmSpec, accelerator: Accelerator, cmdline: str, overlay: bool) -> list[str]:
    """The qemu command line; paths are relative to the VM's run directory (qemu runs there)."""
    image = spec.image
    machine = "microvm,x-option-roms=off,isa-serial=on,rtc=off"
    argv = [
        binary,
        "-M", machine + (f",memory-backend={RAM_BACKEND}" if spec.ram_file is not None else ""),
        "-accel", accelerator,
        # ARAT (an always-running APIC timer) lets the guest kernel stop its tick when idle; without it the
        # timer ran periodically at 250 Hz, and an idle VM cost its VMM 7% of a host core under TCG (1.4%).
        "-cpu", "qemu64,+arat",
        "-m", str(spec.memory_mib),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-sandbox", SANDBOX, "-chroot", ".",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", cmdline,
        "-chardev", f"socket,id=agent,path={AGENT_SOCKET},server=on,wait=off",
        "-device", "virtio-serial-device",
        "-device", "virtserialport,chardev=agent,name=lg.agent",
        "-chardev", f"file,id=console,path={CONSOLE_LOG}",
        "-serial", "chardev:console",
        "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
    ]
    if spec.ram_file is not None:
        argv += ["-object", ram_backend(spec.memory_mib, spec.ram_file, shared=True)]
    if image.rootfs is not None:
        drive = f"id=root,file={OVERLAY},format=qcow2,if=none" if overlay else (
            f"id=root,file={image.rootfs},format=raw,if=none,snapshot=on"
        )
        argv += ["-drive", drive, "-device", "virtio-blk-device,drive=root"]
    return argv


def ram_backend(memory_mib: int, path: Path, shared: bool) -> str:
    """Guest RAM in a file: shared (a template writes its RAM there) or private (a clone maps the template's
    file copy-on-write: its writes never reach the file)."""
    if "," in str(path):
        raise BootFailed(f"a RAM file path may not contain a comma (QEMU option syntax): {path}")
    return (f"memory-backend-file,id={RAM_BACKEND},size={memory_mib}M,mem-path={path},"
            f"share={'on' if shared else 'off'}")


def create_overlay(run_dir: Path, base: Path) -> bool:
    """A copy-on-write qcow2 overlay over the read-only base image; False if qemu-img is missing."""
    tool = shutil.which("qemu-img")
    if tool is None:
        return False
    done = subprocess.run(
        [tool, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base.resolve()), str(run_dir / OVERLAY)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        raise BootFailed(f"cannot create the disk overlay over {base}: {done.stderr.strip()}")
    return True


def guest_panic(console: str) -> str | None:
    """The reason of the last guest kernel panic in a console log ("sysrq triggered crash"), if any."""
    found = None
    for line in console.splitlines():
        _, marker, reason = line.partition("Kernel panic - not syncing:")
        if marker:
            found = reason.strip() or "no reason given"
    return found


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

    @property
    def verdict_path(self) -> Path:
        return self.verdict_dir / KVM_VERDICT_FILE

    def binary_path(self) -> Path | None:
        found = shutil.which(self.binary)
        return Path(found) if found else None

    def version(self) -> str | None:
        path = self.binary_path()
        if path is None:
            return None
        try:
            done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        match = re.search(r"version (\S+)", done.stdout)
        return match.group(1) if match else None

    def fingerprint(self) -> str:
        return host.host_fingerprint(extra=f"{self.binary_path()} {self.version()}")

    # --- probe ---

    def probe(self, image: GuestImage | None = None) -> HostProbe:
        binary, version = self.binary_path(), self.version()
        problems: list[Problem] = []
        if binary is None:
            problems.append(Problem(f"{self.binary} is not installed", INSTALL_FIX))
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

    def restore(self, snapshot: Path, spec: VmSpec) -> QemuVm:
        """A new VM resumed from `snapshot` (see save_snapshot), its clock and RNG resynced with the host."""
        from lg.vm import qemu_snapshot  # noqa: PLC0415

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


def read_console_tail(path: Path, lines: int) -> str | None:
    """The last lines of a serial console log, terminal control sequences removed; None if it is gone."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - 65536))
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    cleaned = [_CONTROL.sub("", line.rstrip("\r")) for line in text.splitlines()]
    return "\n".join(cleaned[-lines:])


def _option_int(argv: list[str], option: str, default: int) -> int:
    """The number after `option` on a qemu command line (`-m 512`, `-smp 2`)."""
    with contextlib.suppress(ValueError, IndexError):
        return int(argv[argv.index(option) + 1].split(",")[0])
    return default


# --- the VM -------------------------------------------------------------------------------------------


class QemuVm(AgentVm):
    def __init__(self, vm_id: str, accelerator: Accelerator, run_dir: Path) -> None:
        super().__init__(vm_id, accelerator)
        self.run_dir = run_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.argv: list[str] = []
        self.image_digest = ""
        self._last_console = ""
        self.vmm_cgroup: vmm_cgroup.VmmCgroup | None = None
        self.network: network.VmNetwork | None = None  # None: no NIC at all

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def host_confinement(self) -> dict[str, Any]:
        return {
            "vmm": "qemu",
            "seccomp_sandbox": SANDBOX,
            "chroot": "its private run directory (after start-up: it sees only its own sockets and logs)",
            **(self.vmm_cgroup.to_json() if self.vmm_cgroup else {"cgroups": "none"}),
            "uid": "root: not dropped (QEMU's -runas needs set*uid, which its own -sandbox denies)",
        }

    @property
    def network_state(self) -> dict[str, Any] | None:
        if self.network is None:
            return None
        return {**self.network.to_json(), "denied_attempts": self.network.denied_attempts()}

    def start(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        self.argv = argv
        self.started = time.monotonic()
        with contextlib.ExitStack() as stack:
            log = stack.enter_context((self.run_dir / QEMU_LOG).open("wb"))
            die_with_parent = host.die_with_parent(os.getpid())

            def preexec() -> None:
                die_with_parent()
                host.session_keeps_nice()

            if self.network is not None:
                # The VMM lives in the VM's network namespace: that is where its tap device is.
                netns_fd = os.open(self.network.netns_path, os.O_RDONLY | os.O_CLOEXEC)
                stack.callback(os.close, netns_fd)

                def preexec() -> None:
                    die_with_parent()
                    host.session_keeps_nice()
                    network.enter_namespace(netns_fd)

            self.process = subprocess.Popen(
                argv,
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is lg's to handle, not qemu's
                preexec_fn=preexec,  # noqa: PLW1509 - prctl, a /proc write, setns: no locks
                close_fds=True,
                pass_fds=pass_fds,
            )
        write_owner(self.run_dir, self.process.pid, "qemu")
        try:
            self.vmm_cgroup = vmm_cgroup.confine(self.process.pid, self.id, _option_int(argv, "-m", 256),
                                                 _option_int(argv, "-smp", 1))
        except EnvironmentUnfit:
            self._kill_and_wait()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = self.started + timeout
        try:
            sock = self._connect(deadline)
            client = AgentClient(sock, alive=self.check_alive, lost=self.channel_lost)
            info = client.hello(max(0.1, deadline - time.monotonic()))
        except GuestCrashed as crash:
            raise BootFailed(f"the guest did not boot under {self.accelerator}: {crash.message}",
                             crash.console) from None
        except AgentUnresponsive as silent:
            console = self.console_tail()
            why = "its console stayed empty" if not console.strip() else silent.message
            raise BootFailed(
                f"the guest did not become ready under {self.accelerator} within {timeout:.0f}s ({why})",
                console) from None
        self.attach(client, info, time.monotonic() - self.started)

    def _connect(self, deadline: float) -> socket.socket:
        connector = UnixSocketConnector(self.run_dir / AGENT_SOCKET)
        while True:
            self.check_alive()
            try:
                return connector.connect(timeout=0.2)
            except ChannelError as problem:
                if time.monotonic() >= deadline:
                    raise AgentUnresponsive(f"qemu never opened the agent socket: {problem}") from None

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is None:
            return
        code = self.process.returncode
        detail = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        stderr = self._qemu_log_tail()
        message = f"VM {self.id}: qemu {detail}" + (f": {stderr}" if stderr else "")
        panic = guest_panic(self.console_tail(400))
        if panic:
            message += f" after a guest kernel panic ({panic})"
        raise GuestCrashed(message, self.console_tail())

    def channel_lost(self) -> None:
        """The agent channel closed: if qemu is on its way out (a panic), report that instead."""
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=CHANNEL_LOST_GRACE)
        self.check_alive()

    def _qemu_log_tail(self) -> str:
        try:
            text = (self.run_dir / QEMU_LOG).read_text(errors="replace")
        except OSError:
            return ""
        return " / ".join(line.strip() for line in text.strip().splitlines()[-5:])

    def console_tail(self, lines: int = 30) -> str:
        tail = read_console_tail(self.run_dir / CONSOLE_LOG, lines)
        return tail if tail is not None else "\n".join(self._last_console.splitlines()[-lines:])

    def _terminate(self) -> None:
        self._last_console = self.console_tail(200)
        if self.process is not None and self.process.poll() is None:
            self._quit_via_qmp()
            self._kill_and_wait()
        if self.vmm_cgroup is not None:
            vmm_cgroup.release(self.vmm_cgroup)
        if self.network is not None:
            self.network.release()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def qmp(self, timeout: float = 5.0) -> QmpClient:
        """A fresh QMP session (close it when done); QmpError if qemu does not answer."""
        return QmpClient.connect(self.run_dir / QMP_SOCKET, timeout=timeout)

    def handover(self) -> dict[str, Any]:
        """Give the agent channel to another process (the pool daemon's client): where to connect, where the
        console is, which process is the VMM. This process keeps the VMM and destroys it."""
        self.detach_agent()
        return {"run_dir": str(self.run_dir), "agent_socket": str(self.run_dir / AGENT_SOCKET),
                "console_log": str(self.run_dir / CONSOLE_LOG), "pid": self.pid}

    def save_snapshot(self, path: Path) -> None:
        from lg.vm import qemu_snapshot  # noqa: PLC0415 - snapshots are the pool's business, loaded on use

        qemu_snapshot.save(self, path)

    def _quit_via_qmp(self) -> None:
        try:
            qmp = self.qmp(timeout=1.0)
        except (QmpError, OSError):
            return
        try:
            with contextlib.suppress(QmpError, OSError):
                qmp.execute("quit", timeout=1.0)
        finally:
            qmp.close()

    def _kill_and_wait(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=2.0)
            return
        self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10.0)  # a qemu stuck in the kernel (bad KVM) may take a moment

