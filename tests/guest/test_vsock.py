"""The guest side of vsock: the agent's listener, chosen from the kernel command line, serving one host after
another, and surviving what a snapshot's resume does to vsock (every connection reset, the listener kept).

This host has no vsock transport lg may listen on (no /dev/vhost-vsock, no loopback), so the AF_VSOCK socket is
a test double: a listener whose accept() hands out one end of a unix socketpair, and which can fail as a vsock
listener does. Everything above the socket is the real agent (lg.guest.agent over lg.guest.channel)."""

from __future__ import annotations

import errno
import socket
import threading
from collections import deque
from collections.abc import Iterator

import pytest

from lg.guest.agent import Agent, Options, endpoint_from, vsock_port_from
from lg.guest.channel import VirtioPortEndpoint, VsockListenEndpoint
from lg.guest.protocol import FrameDecoder, Message, request


class DoubleListener:
    """Stands for a listening AF_VSOCK socket: accept() returns what the test queued (a socket, or an OSError)."""

    def __init__(self) -> None:
        self.queue: deque[socket.socket | OSError] = deque()
        self.ready = threading.Condition()
        self.closed = False

    def connect(self) -> socket.socket:
        host, guest = socket.socketpair()
        self.push(guest)
        return host

    def push(self, item: socket.socket | OSError) -> None:
        with self.ready:
            self.queue.append(item)
            self.ready.notify()

    def accept(self) -> tuple[socket.socket, tuple[int, int]]:
        with self.ready:
            self.ready.wait_for(lambda: self.queue)  # a daemon thread: blocks until the test ends
            item = self.queue.popleft()
        if isinstance(item, OSError):
            raise item
        return item, (2, 1234)

    def close(self) -> None:
        self.closed = True


def _hello(host: socket.socket, request_id: int) -> dict[str, object]:
    decoder = FrameDecoder()
    host.settimeout(20)
    host.sendall(request(request_id, "hello"))
    while True:
        data = host.recv(65536)
        assert data, "the agent closed the connection"
        for frame in decoder.feed(data):
            if isinstance(frame, Message) and frame.body.get("id") == request_id:
                return frame.body


@pytest.fixture
def listeners() -> Iterator[list[DoubleListener]]:
    made: list[DoubleListener] = []
    yield made


def _serve(listeners: list[DoubleListener]) -> None:
    def make(port: int) -> socket.socket:
        assert port == 1024
        listener = DoubleListener()
        listeners.append(listener)
        return listener  # type: ignore[return-value]

    endpoint = VsockListenEndpoint(1024, b"", make_listener=make)
    threading.Thread(target=Agent(endpoint).serve_forever, daemon=True).start()


def _first_listener(listeners: list[DoubleListener]) -> DoubleListener:
    for _ in range(200):
        if listeners:
            return listeners[-1]
        threading.Event().wait(0.01)
    raise AssertionError("the agent made no listener")


def test_the_agent_serves_one_host_after_another_and_survives_a_reset(listeners: list[DoubleListener]) -> None:
    _serve(listeners)
    listener = _first_listener(listeners)
    first = listener.connect()
    assert _hello(first, 1)["type"] == "result"
    # A snapshot's resume: the connection is reset under the agent; the listener stays.
    first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    first.close()
    second = listener.connect()
    assert _hello(second, 2)["type"] == "result"
    second.close()
    assert len(listeners) == 1, "the listener was made again although it still worked"


def test_an_aborted_accept_is_retried_and_a_broken_listener_is_made_again(listeners: list[DoubleListener]) -> None:
    _serve(listeners)
    listener = _first_listener(listeners)
    listener.push(OSError(errno.ECONNABORTED, "aborted"))  # one connection gave up: keep the listener
    host = listener.connect()
    assert _hello(host, 1)["type"] == "result"
    host.close()
    listener.push(OSError(errno.ENODEV, "transport gone"))  # the listener itself is broken: make another
    for _ in range(500):
        if len(listeners) == 2:
            break
        threading.Event().wait(0.01)
    assert len(listeners) == 2 and listener.closed
    host = listeners[1].connect()
    assert _hello(host, 2)["type"] == "result"


@pytest.mark.parametrize(("cmdline", "port"), [
    ("console=ttyS0 lg.agent=vsock:1024 quiet", 1024),
    ("console=ttyS0", None),
    ("lg.agent=vsock:", None),
    ("lg.agent=vsock:-1", None),
    ("lg.agent=serial:1024", None),
])
def test_the_kernel_command_line_chooses_vsock(cmdline: str, port: int | None) -> None:
    assert vsock_port_from(cmdline) == port
    endpoint = endpoint_from(Options(), cmdline)
    if port is None:
        assert isinstance(endpoint, VirtioPortEndpoint)
    else:
        assert isinstance(endpoint, VsockListenEndpoint) and endpoint.port == port


def test_an_explicit_option_wins_over_the_command_line() -> None:
    options = Options()
    options.device = "/dev/vport0p1"
    assert isinstance(endpoint_from(options, "lg.agent=vsock:1024"), VirtioPortEndpoint)
