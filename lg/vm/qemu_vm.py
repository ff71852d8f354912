"""A QEMU microVM: one qemu process, its private run directory, its QMP socket and its agent channel.

The process runs in its own session (terminal signals never reach it), confined with `-sandbox on,...=deny`
and a cgroup of its own (lg.vm.vmm_cgroup), and is killed by the kernel if lg dies (PR_SET_PDEATHSIG). Booting
and restoring it is lg.vm.qemu's and lg.vm.qemu_snapshot's business; this is the running VM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit
from lg.vm import host, network, vmm_cgroup
from lg.vm.agent_client import AgentClient
from lg.vm.api import Accelerator, AgentUnresponsive, BootFailed, GuestCrashed, VmHandover
from lg.vm.base import AgentVm
from lg.vm.channel import ChannelError, UnixSocketConnector
from lg.vm.console import read_console_tail
from lg.vm.qemu_argv import AGENT_SOCKET, CONSOLE_LOG, QEMU_LOG, QMP_SOCKET, SANDBOX, option_int
from lg.vm.qmp import QmpClient, QmpError
from lg.vm.rundir import write_owner

CHANNEL_LOST_GRACE = 3.0  # seconds qemu gets to exit after the agent channel closed


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
            self.vmm_cgroup = vmm_cgroup.confine(self.process.pid, self.id, option_int(argv, "-m", 256),
                                                 option_int(argv, "-smp", 1))
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

    def vmm_pid(self) -> int | None:
        return self.pid

    def handover(self) -> VmHandover:
        """Give the agent channel to another process (the pool daemon's client): where to connect, where the
        console is, which process is the VMM. This process keeps the VMM and destroys it."""
        self.detach_agent()
        return VmHandover(self.run_dir, self.run_dir / AGENT_SOCKET, self.run_dir / CONSOLE_LOG, self.pid)

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


def guest_panic(console: str) -> str | None:
    """The reason of the last guest kernel panic in a console log ("sysrq triggered crash"), if any."""
    found = None
    for line in console.splitlines():
        _, marker, reason = line.partition("Kernel panic - not syncing:")
        if marker:
            found = reason.strip() or "no reason given"
    return found
