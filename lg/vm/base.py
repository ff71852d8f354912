"""`AgentVm`: the shared half of every backend whose guest runs lg's agent.

A backend boots its VMM, connects a socket to the agent (lg.vm.channel) and hands it to `attach`; everything
a step does in the VM (exec, files, changes) then goes through this class, the same for QEMU, Firecracker or
Cloud Hypervisor. The backend supplies the VMM side: `check_alive`, `_terminate`, `console_tail`.
Every AgentVm can take a new identity (lg.vm.api.IdentityVm) and give its agent connection away
(`hand_over_channel`, half of lg.vm.api.HandOverVm: the backend says where the VM is).
"""

from __future__ import annotations

import abc
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from lg.guest.protocol import ProtocolError, check_relative_path
from lg.model import FileChange
from lg.vm.agent_client import AgentClient
from lg.vm.api import (
    Accelerator,
    AgentInfo,
    AgentUnresponsive,
    ExecRequest,
    ExecResult,
    OutputCallback,
    TransferStats,
    VmError,
)

CHANGE_KINDS = ("created", "modified", "deleted")


class AgentVm(abc.ABC):
    max_get_bytes: int | None = 16 << 30  # an untrusted guest must not fill the host's disk
    def __init__(self, vm_id: str, accelerator: Accelerator) -> None:
        self._id = vm_id
        self._accelerator: Accelerator = accelerator
        self._client: AgentClient | None = None
        self._info: AgentInfo | None = None
        self._boot_seconds = 0.0
        self.destroyed = False

    @property
    def host_confinement(self) -> Mapping[str, Any]:
        return {}

    @property
    def network_state(self) -> Mapping[str, Any] | None:
        """The VM's egress allow-list as applied (None: the VM has no network device)."""
        return None

    # --- what the backend provides ----------------------------------------------------------------------

    @abc.abstractmethod
    def check_alive(self) -> None:
        """Raise GuestCrashed (with the console tail) if the VM is no longer running."""

    @abc.abstractmethod
    def _terminate(self) -> None:
        """Stop the VMM for good and remove its files. Called once."""

    @abc.abstractmethod
    def console_tail(self, lines: int = 30) -> str: ...

    # --- the Vm interface ----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def accelerator(self) -> Accelerator:
        return self._accelerator

    @property
    def boot_seconds(self) -> float:
        return self._boot_seconds

    @property
    def agent_info(self) -> AgentInfo:
        if self._info is None:
            raise VmError(f"VM {self.id} has no agent connection")
        return self._info

    def attach(self, client: AgentClient, info: AgentInfo, boot_seconds: float) -> None:
        self._client, self._info, self._boot_seconds = client, info, boot_seconds

    @property
    def agent(self) -> AgentClient:
        if self._client is None or self.destroyed:
            raise VmError(f"VM {self.id} is not running")
        return self._client

    @contextmanager
    def _context(self) -> Iterator[None]:
        """Attach the console tail to agent errors, which is what tells a user why a guest went quiet."""
        try:
            yield
        except VmError as error:
            if not error.console and isinstance(error, AgentUnresponsive):
                error.console = self.console_tail()
            raise

    def exec(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecResult:
        with self._context():
            return self.agent.exec(request, on_output)

    def put_tree(
        self, host_dir: Path, guest_dir: str, exclude: Callable[[str], bool] | None = None,
        owner: tuple[int, int] | None = None,
    ) -> TransferStats:
        started = time.monotonic()
        with self._context():
            stats = self.agent.put_tree(host_dir, guest_dir, exclude, owner=owner)
        return TransferStats(stats.bytes, stats.files, time.monotonic() - started)

    def get_paths(self, guest_dir: str, relative_paths: list[str], dest_dir: Path) -> TransferStats:
        started = time.monotonic()
        with self._context():
            stats = self.agent.get_paths(guest_dir, list(relative_paths), dest_dir, self.max_get_bytes)
        return TransferStats(stats.bytes, stats.files, time.monotonic() - started)

    def changes(self, guest_dir: str) -> list[FileChange]:
        with self._context():
            body = self.agent.call("changes", root=guest_dir)
            records = body.get("changes")
            if not isinstance(records, list):
                raise AgentUnresponsive("the guest agent's changes answer is malformed")
            return [file_change(record) for record in records]

    def resync(self) -> None:
        with self._context():
            self.agent.call("set_clock", epoch_ns=time.time_ns())
            self.agent.call("reseed", entropy=os.urandom(64).hex())

    def detach_agent(self) -> None:
        """Close this process's agent connection, so that another process can open its own (the guest agent
        reopens its port after each disconnect). The VM goes on running."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def hand_over_channel(self) -> socket.socket | None:
        """The open agent connection itself, for another process (sent as a file descriptor): it goes on
        where this one stopped, with no reconnect for the guest agent to notice and wait out. This process
        stops using it; the caller closes this copy once sent."""
        client, self._client = self._client, None
        if client is None:
            return None
        if client.inbox or client.decoder.pending():  # frames read half or not delivered would be lost:
            client.close()  # close it, and the other process connects afresh (the agent reopens its port)
            return None
        return client.sock

    def set_identity(self, hostname: str, machine_id: str) -> dict[str, Any]:
        """A fresh hostname and machine id, the host's clock and new entropy, in one round trip (a VM restored
        from a snapshot starts as its template, with its clock and RNG state)."""
        with self._context():
            return self.agent.call("identity", hostname=hostname, machine_id=machine_id, epoch_ns=time.time_ns(),
                                   entropy=os.urandom(64).hex())

    def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        try:
            if self._client is not None:
                self._client.close()
        finally:
            self._terminate()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.destroy()


def file_change(record: Any) -> FileChange:
    """A change record from the (untrusted) guest, validated field by field."""
    try:
        if not isinstance(record, dict):
            raise ProtocolError("bad_request", "not an object")
        path = record.get("path")
        if not isinstance(path, str) or check_relative_path(path) != path:
            raise ProtocolError("bad_request", f"bad path {path!r}")
        kind = record.get("kind")
        if kind not in CHANGE_KINDS:
            raise ProtocolError("bad_request", f"bad kind {kind!r}")
        return FileChange(
            path=path,
            kind=kind,
            size=_optional(record, "size", int, lambda v: v >= 0),
            sha256=_optional(record, "sha256", str, lambda v: len(v) == 64 and v.isalnum()),
            mode=_optional(record, "mode", int, lambda v: 0 <= v <= 0o7777),
            old_mode=_optional(record, "old_mode", int, lambda v: 0 <= v <= 0o7777),
            symlink_target=_optional(record, "symlink_target", str, lambda v: "\0" not in v),
        )
    except ProtocolError as problem:
        raise AgentUnresponsive(f"the guest agent sent an invalid change record: {problem}") from problem


def _optional(record: dict[str, Any], key: str, kind: type, check: Callable[[Any], bool]) -> Any:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
        raise ProtocolError("bad_request", f"bad {key} {value!r}")
    return value
