"""The host side of the agent protocol, over any connected stream socket (see lg.vm.channel).

The guest is untrusted: every frame it sends is validated, a malformed or oversized one ends the session
with `AgentUnresponsive`, and while waiting the client keeps asking the backend whether the VM is still
alive, so a guest that panics surfaces at once as the backend's error (with its console), never as a hang.
Sending never blocks on a guest that is itself blocked writing: while a send waits, incoming frames are
read into the inbox.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import socket
import tarfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lg.guest import tarsafe
from lg.guest.protocol import (
    DATA_CHUNK,
    MAX_FRAME,
    PROTOCOL_VERSION,
    BadFrame,
    Data,
    Frame,
    FrameDecoder,
    Message,
    ProtocolError,
    Stream,
    encode_data,
    get_int,
    get_number,
    get_opt_int,
    get_str,
    request,
)
from lg.vm.api import (
    AgentFailure,
    AgentInfo,
    AgentUnresponsive,
    ExecRequest,
    ExecResult,
    OutputCallback,
    VmError,
)

LIVENESS_INTERVAL = 0.25  # seconds between "is the VM still alive?" checks while waiting
EXEC_GRACE = 30.0  # extra seconds the host waits beyond an exec's own timeout before giving up on the agent
REQUEST_TIMEOUT = 120.0  # default deadline of short requests
STREAM_NAMES = {Stream.STDOUT: "stdout", Stream.STDERR: "stderr"}


class _Timeout(Exception):
    pass


class AgentClient:
    """Requests to one guest agent over one connection. Not thread-safe: one request at a time."""

    def __init__(
        self, sock: socket.socket, alive: Callable[[], None] = lambda: None,
        lost: Callable[[], None] | None = None,
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.alive = alive  # raises the backend's error when the VM has died
        # Called when the channel breaks: the VMM may close it a moment before it exits (guest panic).
        self.lost = lost or alive
        self.decoder = FrameDecoder(max_frame=MAX_FRAME, max_discard=0)
        self.inbox: deque[Frame] = deque()
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    # --- frame I/O ------------------------------------------------------------------------------------

    def _read_available(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError as problem:
            self.lost()
            raise AgentUnresponsive(f"the agent channel failed: {problem}") from problem
        if not data:
            self.lost()
            raise AgentUnresponsive("the guest agent closed its channel")
        for frame in self.decoder.feed(data):
            if isinstance(frame, BadFrame):
                raise AgentUnresponsive(f"the guest agent sent a malformed frame ({frame.message})")
            self.inbox.append(frame)

    def _wait(self, deadline: float | None, writable: bool = False) -> bool:
        """Wait for input (or room to write); True if the socket became writable."""
        while True:
            self.alive()
            slice_ = LIVENESS_INTERVAL
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Timeout
                slice_ = min(slice_, remaining)
            readable, ready, _ = select.select([self.sock], [self.sock] if writable else [], [], slice_)
            if readable:
                self._read_available()
                if not writable:
                    return False
            if ready:
                return True

    def _next(self, deadline: float | None) -> Frame:
        while not self.inbox:
            self._wait(deadline)
        return self.inbox.popleft()

    def send(self, data: bytes, deadline: float | None = None) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                self._wait(deadline, writable=True)
            except OSError as problem:
                self.lost()
                raise AgentUnresponsive(f"cannot write to the guest agent: {problem}") from problem

    def new_id(self) -> int:
        return next(self._ids) % 0xFFFFFFFE + 1

    def final(
        self, request_id: int, deadline: float | None, on_data: Callable[[Data], None] | None = None
    ) -> dict[str, Any]:
        """The final answer to `request_id`, passing its data frames to `on_data` meanwhile."""
        while True:
            frame = self._next(deadline)
            if isinstance(frame, Data):
                if frame.request_id == request_id and on_data is not None:
                    on_data(frame)
                continue
            if not isinstance(frame, Message) or frame.id != request_id:
                continue  # the ready banner, or an answer to a request given up on
            if frame.body.get("type") == "error":
                code = str(frame.body.get("code", "failed"))
                raise AgentFailure(f"guest agent: {frame.body.get('message', code)}", code)
            return frame.body

    def call(self, op: str, timeout: float = REQUEST_TIMEOUT, **fields: Any) -> dict[str, Any]:
        request_id = self.new_id()
        deadline = time.monotonic() + timeout
        self.send(request(request_id, op, **fields), deadline)
        try:
            return self.final(request_id, deadline)
        except _Timeout:
            raise AgentUnresponsive(f"the guest agent did not answer {op!r} within {timeout:.0f}s") from None

    # --- requests ------------------------------------------------------------------------------------

    def hello(self, timeout: float, resend_every: float = 1.0) -> AgentInfo:
        """Handshake, resending until an answer (a hello sent before the agent opened its port may be lost)."""
        deadline = time.monotonic() + timeout
        while True:
            request_id = self.new_id()
            self.send(request(request_id, "hello", protocol=PROTOCOL_VERSION), deadline)
            try:
                body = self.final(request_id, min(deadline, time.monotonic() + resend_every))
            except _Timeout:
                if time.monotonic() >= deadline:
                    raise AgentUnresponsive(f"the guest agent did not answer within {timeout:.0f}s") from None
                continue
            return _agent_info(body)

    def exec(self, exec_request: ExecRequest, on_output: OutputCallback | None = None) -> ExecResult:
        request_id = self.new_id()
        self.send(request(request_id, "exec", **exec_fields(exec_request)))
        if exec_request.stdin is not None:
            self._send_stream(request_id, Stream.STDIN, exec_request.stdin)
        deadline = time.monotonic() + exec_request.timeout + EXEC_GRACE if exec_request.timeout else None

        def deliver(frame: Data) -> None:
            name = STREAM_NAMES.get(frame.stream)
            if name is not None and on_output is not None and frame.payload:
                on_output(name, frame.payload)

        try:
            body = self.final(request_id, deadline, deliver)
        except _Timeout:
            raise AgentUnresponsive("the guest agent did not end a timed-out command") from None
        return _exec_result(body)

    def _send_stream(self, request_id: int, stream: int, payload: bytes) -> None:
        for start in range(0, len(payload), DATA_CHUNK):
            self.send(encode_data(request_id, stream, payload[start : start + DATA_CHUNK]))
        self.send(encode_data(request_id, stream, b""))

    def put_tree(
        self, host_dir: Path, guest_dir: str, exclude: Callable[[str], bool] | None, manifest: bool = True,
        owner: tuple[int, int] | None = None,
    ) -> tarsafe.TreeStats:
        request_id = self.new_id()
        ownership = {"uid": owner[0], "gid": owner[1]} if owner is not None else {}
        self.send(request(request_id, "put", dest=guest_dir, manifest=manifest, **ownership))
        outgoing = _Outgoing(self, request_id)
        try:
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=outgoing, mode="w|", bufsize=DATA_CHUNK, format=tarfile.PAX_FORMAT
            ) as archive:
                stats: tarsafe.TreeStats = tarsafe.add_tree(archive, str(host_dir), exclude)
        except Exception:
            # Reading the host tree failed: end the stream so the agent answers, and keep our own error.
            with contextlib.suppress(VmError):
                outgoing.end()
                self.final(request_id, time.monotonic() + REQUEST_TIMEOUT)
            raise
        outgoing.end()
        _check_count(self.final(request_id, None), stats)
        return stats

    def get_paths(
        self, guest_dir: str, relative_paths: list[str], dest_dir: Path, max_bytes: int | None = None
    ) -> tarsafe.TreeStats:
        request_id = self.new_id()
        self.send(request(request_id, "get", root=guest_dir, paths=relative_paths))
        incoming = _Incoming(self, request_id)
        incoming.prime()
        if not incoming.buffer:  # nothing was sent: an error (missing path), or nothing to send
            incoming.drain()
            self.final_from(incoming.answer or self.final(request_id, None))
            return tarsafe.TreeStats()
        try:
            extractor = tarsafe.Extractor(str(dest_dir), max_bytes=max_bytes)
            with tarfile.open(fileobj=incoming, mode="r|", bufsize=DATA_CHUNK) as archive:  # type: ignore[call-overload]
                stats: tarsafe.TreeStats = extractor.extract_all(archive)
        except (ProtocolError, tarfile.TarError) as problem:
            incoming.drain()
            raise AgentFailure(f"refused what the guest sent back: {problem}", "unsafe") from problem
        incoming.drain()
        self.final_from(incoming.answer or self.final(request_id, None))
        return stats

    def final_from(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("type") == "error":
            code = str(body.get("code", "failed"))
            raise AgentFailure(f"guest agent: {body.get('message', code)}", code)
        return body


def exec_fields(exec_request: ExecRequest) -> dict[str, Any]:
    """The exec request as the agent reads it (lg.guest.execute.parse_command)."""
    fields: dict[str, Any] = {
        "env": dict(exec_request.env), "cwd": exec_request.cwd, "uid": exec_request.uid,
        "gid": exec_request.gid, "timeout": exec_request.timeout, "stdin": exec_request.stdin is not None,
    }
    if exec_request.confine is not None:
        fields["confine"] = dict(exec_request.confine)
    if exec_request.mkdirs:
        fields["mkdirs"] = list(exec_request.mkdirs)
    if exec_request.script is not None:
        fields["script"] = exec_request.script
    else:
        fields["argv"] = list(exec_request.argv or ())
    return fields


def _check_count(answer: dict[str, Any], stats: tarsafe.TreeStats) -> None:
    try:
        files = get_int(answer, "files")
    except ProtocolError as problem:
        raise AgentUnresponsive(f"the guest agent's put answer is malformed: {problem}") from problem
    if files != stats.files:
        raise AgentFailure(f"the guest extracted {files} of {stats.files} files", "failed")


def _agent_info(body: dict[str, Any]) -> AgentInfo:
    try:
        info = AgentInfo(
            agent=get_str(body, "agent"),
            protocol=get_int(body, "protocol"),
            kernel=get_str(body, "kernel", ""),
            uptime=get_number(body, "uptime", -1.0),
            hostname=get_str(body, "hostname", ""),
        )
    except ProtocolError as problem:
        raise AgentUnresponsive(f"the guest agent's hello is malformed: {problem}") from problem
    if info.protocol != PROTOCOL_VERSION:
        raise AgentUnresponsive(
            f"the guest agent speaks protocol {info.protocol}, this lg speaks {PROTOCOL_VERSION}: "
            "rebuild the image (lg image build)"
        )
    return info


def _exec_result(body: dict[str, Any]) -> ExecResult:
    try:
        timed_out = body.get("timed_out") is True
        return ExecResult(
            exit_code=get_opt_int(body, "exit_code"),
            signal=get_opt_int(body, "signal"),
            timed_out=timed_out,
            duration=get_number(body, "duration", 0.0),
            confinement=body["confinement"] if isinstance(body.get("confinement"), dict) else None,
        )
    except ProtocolError as problem:
        raise AgentUnresponsive(f"the guest agent's exec answer is malformed: {problem}") from problem


class _Outgoing:
    """Write-only file object: tar bytes become data frames of one request."""

    def __init__(self, client: AgentClient, request_id: int) -> None:
        self.client = client
        self.request_id = request_id
        self.ended = False

    def write(self, data: bytes) -> int:
        for start in range(0, len(data), DATA_CHUNK):
            self.client.send(encode_data(self.request_id, Stream.TAR, data[start : start + DATA_CHUNK]))
        return len(data)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.client.send(encode_data(self.request_id, Stream.TAR, b""))


class _Incoming:
    """Read-only file object over one request's incoming tar stream (stops at its end or final answer)."""

    def __init__(self, client: AgentClient, request_id: int) -> None:
        self.client = client
        self.request_id = request_id
        self.buffer = bytearray()
        self.ended = False
        self.answer: dict[str, Any] | None = None

    def _pull(self) -> None:
        frame = self.client._next(None)
        if isinstance(frame, Data) and frame.request_id == self.request_id and frame.stream == Stream.TAR:
            self.buffer += frame.payload
            self.ended = frame.end
        elif isinstance(frame, Message) and frame.id == self.request_id:
            self.answer = frame.body
            self.ended = True

    def prime(self) -> None:
        while not self.ended and not self.buffer:
            self._pull()

    def read(self, size: int = -1) -> bytes:
        while not self.ended and (size < 0 or len(self.buffer) < size):
            self._pull()
        count = len(self.buffer) if size < 0 else min(size, len(self.buffer))
        chunk = bytes(self.buffer[:count])
        del self.buffer[:count]
        return chunk

    def drain(self) -> None:
        while not self.ended:
            self.buffer.clear()
            self._pull()
        self.buffer.clear()

