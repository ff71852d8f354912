"""What crosses the pool daemon's socket: one JSON object a line, VM specs and keys in plain JSON."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.errors import ExitCode, LgError
from lg.vm.api import ExecRequest, VmSpec

MAX_LINE = 1 << 20
SOCKET_ENV = "LG_POOL_SOCKET"


class PoolDaemonError(LgError):
    """The pool daemon refused a request or went away."""

    exit_code = ExitCode.ENVIRONMENT


@dataclass(frozen=True)
class WireImage:
    """A guest image as paths: what the daemon needs to boot it, whoever built it."""

    name: str
    digest: str
    kernel: Path
    initrd: Path
    rootfs: Path | None
    kernel_args: tuple[str, ...]


def default_socket() -> Path:
    """Host-wide, owner-only: /run/luminaguard for root, the user's runtime directory (or ~/.cache) otherwise."""
    configured = os.environ.get(SOCKET_ENV)
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/run/luminaguard/pool.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (Path(runtime) if runtime else Path.home() / ".cache") / "luminaguard" / "pool.sock"


def spec_to_json(spec: VmSpec) -> dict[str, Any]:
    image = spec.image
    return {"image": {"name": image.name, "digest": image.digest, "kernel": str(image.kernel),
                      "initrd": str(image.initrd), "rootfs": str(image.rootfs) if image.rootfs else None,
                      "kernel_args": list(image.kernel_args)},
            "vcpus": spec.vcpus, "memory_mib": spec.memory_mib, "accelerator": spec.accelerator,
            "hostname": spec.hostname, "boot_timeout": spec.boot_timeout}


def spec_from_json(data: dict[str, Any], run_dir: Path) -> VmSpec:
    raw = data["image"]
    image = WireImage(str(raw["name"]), str(raw["digest"]), Path(raw["kernel"]), Path(raw["initrd"]),
                      Path(raw["rootfs"]) if raw.get("rootfs") else None, tuple(map(str, raw["kernel_args"])))
    for path in (image.kernel, image.initrd, *((image.rootfs,) if image.rootfs else ())):
        if not path.is_file():
            raise PoolDaemonError(f"image {image.name} ({image.digest[:12]}): {path} does not exist on this host")
    return VmSpec(image=image, vcpus=int(data["vcpus"]), memory_mib=int(data["memory_mib"]),
                  accelerator=str(data["accelerator"]), run_dir=run_dir, hostname=str(data["hostname"]),
                  boot_timeout=float(data["boot_timeout"]))


def exec_to_json(request: ExecRequest | None) -> dict[str, Any] | None:
    if request is None:
        return None
    return {"argv": list(request.argv) if request.argv else None, "script": request.script, "uid": request.uid,
            "gid": request.gid, "timeout": request.timeout, "confine": request.confine,
            "mkdirs": list(request.mkdirs)}


def exec_from_json(data: dict[str, Any] | None) -> ExecRequest | None:
    if data is None:
        return None
    return ExecRequest(argv=tuple(data["argv"]) if data.get("argv") else None, script=data.get("script"),
                       uid=data.get("uid"), gid=data.get("gid"), timeout=data.get("timeout"),
                       confine=data.get("confine"), mkdirs=tuple(data.get("mkdirs") or ()))


class LineSocket:
    """JSON lines over a unix stream socket; a line may carry file descriptors (SCM_RIGHTS)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self.fds: list[int] = []  # received and not taken yet, in order

    def send(self, message: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        data = json.dumps(message).encode() + b"\n"
        if fds:
            sent = socket.send_fds(self.sock, [data], list(fds))
            data = data[sent:]
        self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """The next message; None at end of stream."""
        while b"\n" not in self._buffer:
            chunk, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
            self.fds += fds
            if not chunk:
                return None
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise PoolDaemonError("a pool message was larger than 1 MiB")
        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        if not isinstance(message, dict):
            raise PoolDaemonError("a pool message was not a JSON object")
        return message

    def take_fd(self) -> int | None:
        return self.fds.pop(0) if self.fds else None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
        self.sock.close()
