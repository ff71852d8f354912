"""Where the agent's connections come from: a virtio-serial port, a vsock listener, a unix socket, an fd.

Every endpoint hands out `Connection`s: a non-blocking fd with frame I/O that raises `Disconnected` when the
host goes away. A virtio-serial port reads end-of-file while no host is connected, so the agent reopens it
(which also drops stale bytes) and announces itself with a `ready` frame; that write blocks in the kernel
until a host connects, which is how the agent waits without spinning.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator

from lg.guest.protocol import FrameDecoder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from lg.guest.protocol import Frame

    class Endpoint(Protocol):
        def connections(self) -> Iterator[Connection]:
            """Connections, one after the other, as hosts come and go."""
            ...

        def describe(self) -> str: ...

PORT_NAME = "lg.agent"
READ_SIZE = 256 * 1024
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL


class Disconnected(Exception):
    """The host closed its side (or the port was unplugged)."""


class Connection:
    """One connected byte stream carrying frames."""

    def __init__(self, fd: int, closer: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self._closer = closer  # a socket's close(), so the socket object and its fd go together
        self.decoder = FrameDecoder()
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def read_frames(self) -> list[Frame]:
        """The frames that are complete after one read; [] if nothing was ready."""
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return []
        except OSError as problem:
            raise Disconnected(str(problem)) from problem
        if not data:
            raise Disconnected("end of file")
        return self.decoder.feed(data)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                self._wait_writable()
                continue
            except OSError as problem:  # EPIPE, ECONNRESET, ENODEV (port unplugged)
                raise Disconnected(str(problem)) from problem
            view = view[written:]

    def _wait_writable(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        for _fd, events in poller.poll(1000):
            if events & select.POLLOUT:
                return
            if events & _HANGUP:
                raise Disconnected("host went away while the agent was writing")

    def close(self) -> None:
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        if self._closer is not None:
            self._closer()
        else:
            os.close(fd)


def announce(fd: int, banner: bytes) -> None:
    """Write the ready frame on a blocking fd: on a virtio port this waits until a host connects."""
    os.set_blocking(fd, True)
    view = memoryview(banner)
    while view:
        view = view[os.write(fd, view) :]


class VirtioPortEndpoint:
    """The virtio-serial port named `lg.agent` (found through sysfs), reopened after each disconnect."""

    def __init__(self, banner: bytes, name: str = PORT_NAME, device: str | None = None) -> None:
        self.banner = banner
        self.name = name
        self.device = device

    def describe(self) -> str:
        return self.device or f"virtio port {self.name}"

    def connections(self) -> Iterator[Connection]:
        while True:
            started = time.monotonic()
            path = self.device or wait_for_port(self.name)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                announce(fd, self.banner)
            except OSError:
                os.close(fd)
                time.sleep(0.1)
                continue
            yield Connection(fd)
            # Guard against spinning should a kernel ever report EOF without blocking the announcement.
            if time.monotonic() - started < 0.05:
                time.sleep(0.05)


def find_port(name: str, sysfs: str = "/sys/class/virtio-ports") -> str | None:
    try:
        entries = sorted(os.listdir(sysfs))
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(sysfs, entry, "name")) as handle:
                if handle.read().strip() == name:
                    return os.path.join("/dev", entry)
        except OSError:
            continue
    return None


def wait_for_port(name: str) -> str:
    """The device of the named port, waiting for drivers to bind (modules load while the agent starts)."""
    delay = 0.01
    while True:
        path = find_port(name)
        if path and os.path.exists(path):
            return path
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


class UnixConnectEndpoint:
    """Connects to a unix socket the host listens on (host-side tests), reconnecting after each EOF."""

    def __init__(self, path: str, banner: bytes) -> None:
        self.path = path
        self.banner = banner

    def describe(self) -> str:
        return f"unix:{self.path}"

    def connections(self) -> Iterator[Connection]:
        delay = 0.01
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                announce(sock.fileno(), self.banner)
            except OSError as problem:
                sock.close()
                if problem.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EPIPE, errno.ECONNRESET):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            delay = 0.01
            yield Connection(sock.fileno(), closer=sock.close)


class FdEndpoint:
    """An already connected fd (a socketpair end in tests): one connection, then the agent exits."""

    def __init__(self, fd: int, banner: bytes) -> None:
        self.fd = fd
        self.banner = banner

    def describe(self) -> str:
        return f"fd {self.fd}"

    def connections(self) -> Iterator[Connection]:
        announce(self.fd, self.banner)
        yield Connection(self.fd)


VSOCK_RETRY_SECONDS = 0.2


def vsock_listener(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        listener.bind((socket.VMADDR_CID_ANY, port))
        listener.listen(1)
    except OSError:
        listener.close()
        raise
    return listener


class VsockListenEndpoint:
    """AF_VSOCK listener for Firecracker / Cloud Hypervisor (their host side speaks hybrid vsock: the VMM turns a
    host's `CONNECT <port>` into a connection to this listener).

    A snapshot's resume closes every vsock connection (Firecracker resets the device: docs/snapshotting/
    snapshot-support.md, "Vsock device reset") while listening sockets stay: the served connection then ends
    with a reset, and the agent accepts the next one. Should the listener itself fail (the vsock module still
    loading at boot, an accept the kernel aborts), it is made again; the agent never exits over it.
    `make_listener` is for tests (this host has no vsock transport to listen on)."""

    def __init__(self, port: int, banner: bytes,
                 make_listener: Callable[[int], socket.socket] = vsock_listener) -> None:
        self.port = port
        self.banner = banner
        self.make_listener = make_listener

    def describe(self) -> str:
        return f"vsock port {self.port}"

    def connections(self) -> Iterator[Connection]:
        listener: socket.socket | None = None
        while True:
            if listener is None:
                try:
                    listener = self.make_listener(self.port)
                except OSError:
                    time.sleep(VSOCK_RETRY_SECONDS)
                    continue
            try:
                sock, _peer = listener.accept()
            except InterruptedError:
                continue
            except OSError as problem:
                if problem.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
                    listener.close()  # a broken listener: make a new one
                    listener = None
                    time.sleep(VSOCK_RETRY_SECONDS)
                continue
            try:
                announce(sock.fileno(), self.banner)
            except OSError:
                sock.close()
                continue
            yield Connection(sock.fileno(), closer=sock.close)
