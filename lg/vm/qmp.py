"""A minimal QMP (QEMU Machine Protocol) client: enough to quit, pause, query and migrate a VM."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path
from typing import Any

from lg.vm.channel import connect_unix

MAX_LINE = 1 << 20


class QmpError(Exception):
    pass


class QmpClient:
    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        greeting = self._read(deadline)
        if "QMP" not in greeting:
            raise QmpError(f"not a QMP greeting: {greeting!r}")
        self.execute("qmp_capabilities", timeout=timeout)

    @classmethod
    def connect(cls, path: Path, timeout: float = 5.0) -> QmpClient:
        try:
            sock = connect_unix(path)
        except OSError as problem:
            raise QmpError(f"cannot connect to QMP at {path}: {problem}") from problem
        try:
            return cls(sock, timeout)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def execute(
        self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10.0,
        fds: list[int] | None = None,
    ) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        data = json.dumps(message).encode() + b"\n"
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.sendall(data)
        except OSError as problem:
            raise QmpError(f"QMP {command}: {problem}") from problem
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('desc', error)}")
            if "return" in reply:
                return reply["return"]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QmpError("QMP did not answer in time")
            ready, _, _ = select.select([self.sock], [], [], remaining)
            if not ready:
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QmpError("QMP connection closed")
            self.buffer += chunk
            if len(self.buffer) > MAX_LINE:
                raise QmpError("QMP sent an overlong line")
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        try:
            value = json.loads(line)
        except ValueError as problem:
            raise QmpError(f"QMP sent invalid JSON: {line[:200]!r}") from problem
        if not isinstance(value, dict):
            raise QmpError(f"QMP sent {value!r}")
        return value
