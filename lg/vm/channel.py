"""Host-side transports to the guest agent: how a backend turns "the VM" into a connected byte stream.

QEMU exposes the guest's virtio-serial port as a unix socket: connect and talk. Firecracker and Cloud
Hypervisor expose guest vsock ports through one unix socket ("hybrid vsock"): connect, send
`CONNECT <port>\\n`, read `OK <host port>\\n`, then talk. Either way the agent client gets a plain socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Protocol

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with its NUL


class ChannelError(Exception):
    """The transport could not connect (the backend turns this into a VmError with context)."""


class Connector(Protocol):
    def connect(self, timeout: float) -> socket.socket:
        """A connected stream socket, or ChannelError after `timeout` seconds."""
        ...

    def describe(self) -> str: ...


def connect_unix(path: Path) -> socket.socket:
    """Connect to a unix socket, also when its path is longer than sun_path allows (via /proc/self/fd)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            sock.connect(str(path))
        else:
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                sock.connect(f"/proc/self/fd/{directory}/{path.name}")
            finally:
                os.close(directory)
    except BaseException:
        sock.close()
        raise
    return sock


def _retrying_connect(path: Path, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect_unix(path)
        except (FileNotFoundError, ConnectionRefusedError) as problem:
            if time.monotonic() >= deadline:
                raise ChannelError(f"cannot connect to {path}: {problem}") from problem
            time.sleep(0.02)


class UnixSocketConnector:
    """A unix socket that is the guest channel itself (QEMU's chardev socket for a virtio-serial port)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"unix:{self.path}"

    def connect(self, timeout: float) -> socket.socket:
        return _retrying_connect(self.path, timeout)


class HybridVsockConnector:
    """Firecracker / Cloud Hypervisor: a unix socket multiplexing guest vsock ports."""

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.port = port

    def describe(self) -> str:
        return f"hybrid-vsock:{self.path}:{self.port}"

    def connect(self, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        sock = _retrying_connect(self.path, timeout)
        try:
            sock.sendall(f"CONNECT {self.port}\n".encode())
            line = _read_line(sock, deadline)
        except BaseException:
            sock.close()
            raise
        if not line.startswith(b"OK "):
            sock.close()
            raise ChannelError(f"{self.describe()}: the VMM answered {line[:80]!r} instead of OK")
        sock.settimeout(None)
        return sock


def _read_line(sock: socket.socket, deadline: float, limit: int = 64) -> bytes:
    """One line, read a byte at a time so nothing after it (the agent's first frame) is consumed."""
    line = bytearray()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(line) > limit:
            raise ChannelError(f"no answer to CONNECT (got {bytes(line)!r})")
        sock.settimeout(remaining)
        try:
            byte = sock.recv(1)
        except TimeoutError as problem:
            raise ChannelError("no answer to CONNECT") from problem
        if not byte:
            raise ChannelError("the VMM closed the socket after CONNECT (is the guest listening?)")
        line += byte
    return bytes(line)


def close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
