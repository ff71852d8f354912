"""put and get: tar streams carried in data frames, extracted safely on arrival, produced on demand."""

from __future__ import annotations

import os
import select
import tarfile

from lg.guest import tree
from lg.guest.channel import Disconnected
from lg.guest.protocol import (
    DATA_CHUNK,
    BadFrame,
    Data,
    ErrorCode,
    ProtocolError,
    Stream,
    encode_data,
    get_opt_int,
    get_str,
    get_str_list,
)
from lg.guest.tarsafe import TreeStats, add_paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from lg.guest.execute import Link
    from lg.guest.manifest import Manifest


def check_guest_dir(path: str) -> str:
    if not path.startswith("/") or "\0" in path or ".." in path.split("/"):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{path!r} must be an absolute path without '..'")
    return os.path.normpath(path)


class IncomingStream:
    """The data frames of one request's tar stream, as the bytes they carry (lg-tree extracts them)."""

    def __init__(self, link: Link, request_id: int) -> None:
        self.link = link
        self.request_id = request_id
        self.buffer = bytearray()
        self.ended = False

    def chunks(self) -> Iterator[bytes]:
        """The stream's bytes as they arrive, until its end."""
        while not self.ended:
            self._fill()
            if self.buffer:
                yield bytes(self.buffer)
                self.buffer.clear()

    def drain(self) -> None:
        """Consume the rest of the stream, so the connection stays in step after an error."""
        while not self.ended:
            self.buffer.clear()
            self._fill()
        self.buffer.clear()

    def _fill(self) -> None:
        frames = self.link.backlog()
        if not frames:
            select.select([self.link.fileno()], [], [], 1.0)
            frames = self.link.receive()
        for frame in frames:
            if isinstance(frame, Data) and frame.request_id == self.request_id and frame.stream == Stream.TAR:
                if frame.end:
                    self.ended = True
                self.buffer += frame.payload
            elif isinstance(frame, BadFrame) and frame.fatal:
                raise Disconnected(frame.message)
            else:
                self.link.refuse(frame)


class OutgoingStream:
    """A write-only file object that sends what is written as data frames of one request."""

    def __init__(self, link: Link, request_id: int) -> None:
        self.link = link
        self.request_id = request_id

    def write(self, data: bytes) -> int:
        for start in range(0, len(data), DATA_CHUNK):
            self.link.send(encode_data(self.request_id, Stream.TAR, data[start : start + DATA_CHUNK]))
        return len(data)

    def end(self) -> None:
        self.link.send(encode_data(self.request_id, Stream.TAR, b""))


def receive_tree(link: Link, request_id: int, body: dict[str, Any]) -> tuple[TreeStats, Manifest]:
    """Extract the tar stream that follows a put request into its `dest` (lg-tree does the per-file work:
    lg.guest.tree), and the manifest of `dest` after it."""
    incoming = IncomingStream(link, request_id)
    try:
        dest = check_guest_dir(get_str(body, "dest"))
        uid, gid = get_opt_int(body, "uid"), get_opt_int(body, "gid")
        owner = (uid, gid if gid is not None else uid) if uid is not None else None
        return tree.put(dest, owner, incoming.chunks())
    finally:
        incoming.drain()


def send_paths(link: Link, request_id: int, body: dict[str, Any]) -> TreeStats:
    """Stream the requested paths under `root` as a tar stream, then its end marker."""
    root = check_guest_dir(get_str(body, "root"))
    paths = get_str_list(body, "paths")
    outgoing = OutgoingStream(link, request_id)
    try:
        with tarfile.open(  # type: ignore[call-overload]
            fileobj=outgoing, mode="w|", bufsize=DATA_CHUNK, format=tarfile.PAX_FORMAT
        ) as archive:
            return add_paths(archive, root, paths)
    finally:
        outgoing.end()
