"""`lg pool serve`: one warm pool shared by every `lg run` on the host, over an owner-only unix socket.

A lease hands the VM over: the daemon keeps the VMM (it is the VMM's parent, so the kernel kills every VM if
the daemon dies), and the client connects to the VM's agent socket itself. A VM is leased to one connection;
it is destroyed when that client releases it or its connection closes (a killed `lg run`), never reused.

Requests, one JSON object a line: {"op": "ping"}, {"op": "status"}, {"op": "expect", key, spec, count,
warmup}, {"op": "lease", key, spec, warmup, timeout}, {"op": "release", vm}. Answers: {"ok": true, ...} or
{"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit, LgError
from lg.model import ProjectConfig
from lg.pool.key import PoolKey
from lg.pool.metrics import prometheus_collector
from lg.pool.pool import Lease, WarmPool
from lg.pool.wire import LineSocket, exec_from_json, spec_from_json
from lg.vm import network, vmm_cgroup
from lg.vm.api import HandOverVm
from lg.vm.registry import hypervisor_for
from lg.vm.rundir import reap_leftovers


class PoolDaemon:
    def __init__(self, config: ProjectConfig, socket_path: Path) -> None:
        self.config = config
        self.socket_path = socket_path
        self.run_parent = config.state_dir / "pool-vms"
        self.pool = WarmPool(lambda name: hypervisor_for(config, name), config.pool, config.cache_dir / "snapshots")
        self.pool.description = f"pool daemon on {socket_path}"
        self.leases: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self.reaped: dict[str, list[str]] = {}

    # --- start and stop ---

    def reap(self) -> dict[str, list[str]]:
        """What a crashed lg or daemon left: VM run directories (and any VMM still alive), VMM cgroups,
        network namespaces, template staging directories."""
        self.reaped = {"vms": reap_leftovers(self.run_parent), "cgroups": vmm_cgroup.reap(),
                       "namespaces": network.reap()}
        return self.reaped

    def bind(self) -> None:
        try:
            self._bind()
        except OSError as error:
            raise EnvironmentUnfit(f"cannot serve the pool on {self.socket_path}: {error.strerror or error}",
                                   fix="give --socket a path in a directory you own") from None

    def _bind(self) -> None:
        directory = self.socket_path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        if self.socket_path.exists() or self.socket_path.is_symlink():
            if _answers(self.socket_path):
                raise EnvironmentUnfit(f"a pool daemon already serves {self.socket_path}",
                                       fix="`lg pool status`; stop it first, or give --socket another path")
            self.socket_path.unlink()  # left by a daemon that died
        daemon = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                daemon.serve_connection(self.request)

        old_umask = os.umask(0o177)  # the socket is created 0600: only its owner may lease VMs
        try:
            server = socketserver.ThreadingUnixStreamServer(str(self.socket_path), Handler)
        finally:
            os.umask(old_umask)
        server.daemon_threads = True
        self._server = server
        # From here on a signal stops the daemon cleanly (socket removed, VMs destroyed), even before
        # serve_forever starts: socketserver's shutdown then makes serve_forever return at once.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: threading.Thread(target=self.stop, daemon=True).start())

    def serve_forever(self) -> None:
        if self._server is None:
            self.bind()
        assert self._server is not None  # noqa: S101 - bind() sets it
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def close(self) -> None:
        """Destroy every VM this daemon made and remove its socket."""
        with self._lock:
            leased = list(self.leases.values())
            self.leases.clear()
        for lease in leased:
            lease.release()
        self.pool.close()
        if self._server is not None:
            self._server.server_close()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    def start_metrics(self, address: str) -> tuple[str, int]:
        from prometheus_client import start_http_server  # noqa: PLC0415
        from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415

        host, _, port = address.rpartition(":")
        registry = CollectorRegistry()
        registry.register(prometheus_collector(self.pool.metrics, self.gauges))
        server, _ = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
        bound_host, bound_port = server.server_address[:2]
        return str(bound_host), int(bound_port)

    def gauges(self) -> list[tuple[str, str, list[tuple[dict[str, str], float]]]]:
        status = self.pool.status()
        return [
            ("lg_pool_active_vms", "VMs leased now", [({}, status["active"])]),
            ("lg_pool_queued_leases", "leases waiting for a free VM", [({}, status["queued_leases"])]),
            ("lg_pool_idle_vms", "ready VMs waiting to be leased, by key",
             [({"key": key["key"]}, key["idle"]) for key in status["keys"]]),
            ("lg_pool_starting_vms", "VMs being made ready, by key",
             [({"key": key["key"]}, key["starting"]) for key in status["keys"]]),
        ]

    # --- one client connection ---

    def serve_connection(self, sock: socket.socket) -> None:
        link = LineSocket(sock)
        mine: set[str] = set()
        try:
            while True:
                try:
                    message = link.receive()
                except (OSError, ValueError, LgError):
                    return
                if message is None:
                    return
                try:
                    answer = self.answer(message, mine)
                except LgError as error:
                    answer = {"ok": False, "error": str(error), "exit_code": int(error.exit_code)}
                except (KeyError, TypeError, ValueError) as error:
                    answer = {"ok": False, "error": f"bad request: {error!r}", "exit_code": 2}
                leased = answer.get("vm")  # a lease passes the VM's agent connection as a file descriptor
                channel = leased.pop("_channel", None) if isinstance(leased, dict) else None
                try:
                    link.send(answer, fds=(channel.fileno(),) if channel is not None else ())
                except OSError:
                    return
                finally:
                    if channel is not None:
                        channel.close()  # the client's copy is the connection now
        finally:
            for vm_id in mine:  # the client went away (or was killed): its VMs go too, never to another
                self.release(vm_id)
            link.close()

    def answer(self, message: dict[str, Any], mine: set[str]) -> dict[str, Any]:
        op = message.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "socket": str(self.socket_path)}
        if op == "status":
            return {"ok": True, "status": {**self.pool.status(), "daemon_pid": os.getpid(),
                                           "socket": str(self.socket_path), "reaped_at_start": self.reaped}}
        if op == "expect":
            key = PoolKey.from_json(message["key"])
            self.pool.expect(key, spec_from_json(message["spec"], self.run_parent), int(message["count"]),
                             exec_from_json(message.get("warmup")))
            return {"ok": True}
        if op == "lease":
            return {"ok": True, "vm": self.lease(message, mine)}
        if op == "release":
            vm_id = str(message["vm"])
            if vm_id not in mine:
                return {"ok": False, "error": f"VM {vm_id} is not leased on this connection"}
            mine.discard(vm_id)
            self.release(vm_id)
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}", "exit_code": 2}

    def lease(self, message: dict[str, Any], mine: set[str]) -> dict[str, Any]:
        key = PoolKey.from_json(message["key"])
        spec = spec_from_json(message["spec"], self.run_parent)
        timeout = message.get("timeout")
        lease = self.pool.lease(key, spec, float(timeout) if timeout is not None else None,
                                exec_from_json(message.get("warmup")))
        vm = lease.vm
        try:
            if not isinstance(vm, HandOverVm):
                raise EnvironmentUnfit(f"hypervisor {key.backend!r} cannot hand its VMs to another process",
                                       fix="run lg without the pool daemon (stop `lg pool serve`)")
            channel = vm.hand_over_channel()
            handover = vm.handover()
        except BaseException:
            lease.release()
            raise
        with self._lock:
            self.leases[vm.id] = lease
        mine.add(vm.id)
        answer = {**lease.to_json(), **handover.to_json(), "accelerator": vm.accelerator,
                  "host_confinement": dict(vm.host_confinement), "boot_seconds": vm.boot_seconds,
                  "channel_passed": channel is not None}
        return {**answer, "_channel": channel} if channel is not None else answer

    def release(self, vm_id: str) -> None:
        with self._lock:
            lease = self.leases.pop(vm_id, None)
        if lease is not None:
            lease.release()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True
