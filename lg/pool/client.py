"""The client side of `lg pool serve`: leases VMs from the daemon and talks to their agents directly."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

from lg.model import ProjectConfig
from lg.pool.key import PoolKey
from lg.pool.local import local_pool
from lg.pool.pool import Lease, WarmPool
from lg.pool.wire import LineSocket, PoolDaemonError, default_socket, exec_to_json, spec_to_json
from lg.vm.agent_client import AgentClient
from lg.vm.api import AgentUnresponsive, ExecRequest, GuestCrashed, SnapshotBackend, VmSpec
from lg.vm.base import AgentVm
from lg.vm.channel import ChannelError, UnixSocketConnector
from lg.vm.console import read_console_tail
from lg.vm.host import process_alive

CONNECT_SECONDS = 2.0
AGENT_CONNECT_SECONDS = 30.0
REQUEST_SLACK_SECONDS = 600.0  # beyond the lease deadline: a template may be built meanwhile


def connect(config: ProjectConfig, path: Path | None = None) -> DaemonClient | None:
    """A client of the daemon serving `path` (default: the host-wide socket), or None when none answers."""
    path = path or default_socket()
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_SECONDS)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None  # a socket left by a daemon that died: run with a pool of our own
    client = DaemonClient(config, path, sock)
    try:
        client.call({"op": "ping"}, CONNECT_SECONDS)
    except PoolDaemonError:
        client.close()
        return None
    return client


class DaemonClient:
    def __init__(self, config: ProjectConfig, path: Path, sock: socket.socket) -> None:
        self.config = config
        self.path = path
        self.description = f"pool daemon on {path}"
        self._link = LineSocket(sock)
        self._lock = threading.Lock()
        self._local: WarmPool | None = None  # for VMs the daemon does not make (network allow-lists)
        self._announced: dict[PoolKey, tuple[VmSpec, int]] = {}  # expected and not leased yet, withdrawn at close

    def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        with self._lock:
            return self._call(message, timeout)

    def _call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._link.sock.settimeout(timeout)
        try:
            self._link.send(message)
            answer = self._link.receive()
        except (OSError, ValueError) as error:
            raise PoolDaemonError(f"the pool daemon on {self.path} went away: {error}") from error
        if answer is None:
            raise PoolDaemonError(f"the pool daemon on {self.path} went away")
        if not answer.get("ok"):
            raise PoolDaemonError(f"the pool daemon refused: {answer.get('error')}")
        return answer

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.call({"op": "status"}, 10.0)["status"]
        return status

    def expect(self, key: PoolKey, spec: VmSpec, count: int, warmup: ExecRequest | None = None) -> None:
        if spec.network is None:
            self.call({"op": "expect", "key": key.to_json(), "spec": spec_to_json(spec), "count": count,
                       "warmup": exec_to_json(warmup)}, 10.0)
            self._announced[key] = (spec, self._announced.get(key, (spec, 0))[1] + count)

    def lease(self, key: PoolKey, spec: VmSpec, timeout: float | None = None,
              warmup: ExecRequest | None = None) -> Lease:
        if spec.network is not None:
            return self._local_pool().lease(key, spec, timeout, warmup)
        asked = time.monotonic()
        if key in self._announced:
            announced_spec, count = self._announced[key]
            self._announced[key] = (announced_spec, max(0, count - 1))
        deadline = timeout if timeout is not None else self.config.pool.lease_timeout
        with self._lock:
            answer = self._call({"op": "lease", "key": key.to_json(), "spec": spec_to_json(spec),
                                 "warmup": exec_to_json(warmup), "timeout": deadline},
                                deadline + REQUEST_SLACK_SECONDS)["vm"]
            passed = self._link.take_fd() if answer.get("channel_passed") else None
        vm = RemoteVm(answer, self)
        try:
            vm.connect(AGENT_CONNECT_SECONDS, passed)
        except BaseException:
            vm.destroy()
            raise
        template = answer.get("template_seconds")
        return Lease(vm, key, str(answer["source"]), time.monotonic() - asked, float(answer["spawn_seconds"]),
                     answer.get("note"), {k: answer[k] for k in ("hostname", "machine_id") if k in answer},
                     _release=lambda lease: lease.vm.destroy(),
                     template_seconds=float(template) if template is not None else None,
                     made_while_waiting=bool(answer.get("made_while_waiting")))

    def snapshot_backend(self, name: str) -> SnapshotBackend | None:
        """None: the daemon's VMs live in its process, where this one cannot save them."""
        return None

    def release(self, vm_id: str) -> None:
        self.call({"op": "release", "vm": vm_id}, 30.0)

    def _local_pool(self) -> WarmPool:
        if self._local is None:
            self._local = local_pool(self.config)
        return self._local

    def close(self) -> None:
        """Withdraw what this run announced and did not lease (a run that stopped at a gate), so the daemon
        does not keep VMs ready for it; closing the connection makes the daemon destroy any VM still leased."""
        for key, (spec, count) in self._announced.items():
            if count:
                with contextlib.suppress(PoolDaemonError):
                    self.call({"op": "expect", "key": key.to_json(), "spec": spec_to_json(spec), "count": -count,
                               "warmup": None}, 10.0)
        self._announced.clear()
        with contextlib.suppress(OSError):
            self._link.close()
        if self._local is not None:
            self._local.close()


class RemoteVm(AgentVm):
    """A VM whose VMM belongs to the pool daemon; this process speaks to its agent."""

    def __init__(self, info: dict[str, Any], daemon: DaemonClient) -> None:
        super().__init__(str(info["vm"]), info["accelerator"])
        self.pid = int(info["pid"])
        self.run_dir = Path(info["run_dir"])
        self.agent_socket = Path(info["agent_socket"])
        self.console_log = Path(info["console_log"])
        self._host_confinement = dict(info.get("host_confinement") or {})
        self._boot = float(info.get("boot_seconds") or 0.0)
        self._daemon = daemon
        self.channel_passed = False  # the daemon's agent connection handed over (else a new one)

    @property
    def host_confinement(self) -> dict[str, Any]:
        return {**self._host_confinement, "owner": self._daemon.description}

    def connect(self, timeout: float, passed: int | None = None) -> None:
        """Talk to the VM's agent: over the daemon's own connection when it `passed` us its descriptor (the
        agent goes on as if nothing happened), else over a new one (the agent first has to notice the
        daemon's went away and reopen its port: 6-30 ms measured)."""
        deadline = time.monotonic() + timeout
        try:
            self.channel_passed = passed is not None
            if passed is not None:
                sock = socket.socket(fileno=passed)
            else:
                sock = UnixSocketConnector(self.agent_socket).connect(timeout=timeout)
            client = AgentClient(sock, alive=self.check_alive, lost=self.channel_lost)
            # A hello sent before the agent reopened its port is lost, so resend often (stale answers are
            # ignored); over a passed connection the first one is answered.
            info = client.hello(max(0.1, deadline - time.monotonic()), resend_every=0.02)
        except ChannelError as problem:
            raise AgentUnresponsive(f"VM {self.id}: cannot reach its agent: {problem}") from None
        self.attach(client, info, self._boot)

    def check_alive(self) -> None:
        if not process_alive(self.pid):
            raise GuestCrashed(f"VM {self.id}: its VMM (pid {self.pid}) is gone; did the pool daemon stop?",
                               self.console_tail())

    def channel_lost(self) -> None:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            self.check_alive()
            time.sleep(0.1)

    def console_tail(self, lines: int = 30) -> str:
        return read_console_tail(self.console_log, lines) or ""

    def _terminate(self) -> None:
        with contextlib.suppress(PoolDaemonError):
            self._daemon.release(self.id)
