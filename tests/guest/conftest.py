"""Run the real agent as a subprocess on the host, over a socketpair, and talk to it."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lg.guest.protocol import Frame, FrameDecoder, Message, request
from lg.guest.tree import BIN_DIR_ENV
from lg.images.build import compile_helper, helper_name
from lg.images.store import agent_sources
from lg.vm.agent_client import AgentClient

REPO = Path(__file__).resolve().parent.parent.parent


def agent_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lg.guest.agent", *args]


def agent_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), BIN_DIR_ENV: str(guest_bin())}


@functools.cache
def guest_bin() -> Path:
    """The guest's native helpers compiled for this host as the image build compiles them (the agent runs
    lg-tree for every put and changes). Compiled once per test session, removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="lg-guest-bin-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    for relative, source in agent_sources():
        if relative.endswith(".c"):
            compile_helper(source, directory / helper_name(relative))
    return directory


class RawPeer:
    """The host end of the socket, speaking bytes, for tests that send what a real host never would."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = 10.0) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the agent")
            self.sock.settimeout(remaining)
            data = self.sock.recv(1 << 16)
            if not data:
                raise EOFError("agent closed the connection")
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    def answer(self, request_id: int | None, timeout: float = 10.0) -> dict:
        """The next message for `request_id` (skipping the ready banner and data frames)."""
        while True:
            frame = self.read(timeout)
            if isinstance(frame, Message) and frame.body.get("type") == "ready":
                continue
            if isinstance(frame, Message) and frame.body.get("id") == request_id:
                return frame.body

    def call(self, request_id: int, op: str, **fields: object) -> dict:
        self.send(request(request_id, op, **fields))
        return self.answer(request_id)


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    sock: socket.socket

    @property
    def raw(self) -> RawPeer:
        """Byte-level access (use either this or `client` in one test: they share the socket)."""
        return self.__dict__.setdefault("_raw", RawPeer(self.sock))

    @property
    def client(self) -> AgentClient:
        return self.__dict__.setdefault("_client", AgentClient(self.sock))


@pytest.fixture
def agent() -> Iterator[AgentProcess]:
    host_end, guest_end = socket.socketpair()
    process = subprocess.Popen(
        agent_command("--fd", str(guest_end.fileno())),
        pass_fds=[guest_end.fileno()],
        env=agent_env(),
        stderr=subprocess.PIPE,
    )
    guest_end.close()
    try:
        yield AgentProcess(process, host_end)
    finally:
        host_end.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
