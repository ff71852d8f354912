"""The wire protocol between the host and the guest agent (shared, standard library only).

A connection is a byte stream (virtio-serial port, vsock, unix socket) carrying frames:

    +-------------------+---------+---------------------------+
    | length (u32, BE)  | type u8 | body (length - 1 bytes)   |
    +-------------------+---------+---------------------------+

* type 1, MESSAGE: the body is a UTF-8 JSON object. Requests carry `id` (u32, chosen by the host) and `op`;
  every request gets exactly one final answer: `{"id", "type": "result", ...}` or
  `{"id", "type": "error", "code", "message"}`.
* type 2, DATA: the body is `request id (u32, BE) | stream (u8) | raw bytes`: stdin, stdout, stderr and tar
  streams of the request with that id. An empty payload ends the stream.

A body longer than `MAX_FRAME` is refused: the receiver skips it, answers an error frame and goes on; a
length beyond `MAX_DISCARD` makes the connection unusable and it is closed. Anything malformed yields a
`BadFrame`, never an exception, so neither side crashes on garbage. See docs/guest-agent.md.
"""

from __future__ import annotations

import json
import struct

# The agent's cold start is part of every boot, and an image's Python may compile the standard library from
# source: lg.guest avoids typing, dataclasses, enum and argparse at run time (about 0.6 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 1

FRAME_HEADER = struct.Struct(">IB")  # length of type + body, frame type
DATA_HEADER = struct.Struct(">IB")  # request id, stream
MAX_FRAME = 1 << 20  # the largest body either side accepts
MAX_DISCARD = 64 << 20  # an oversized frame up to this size is skipped; a larger one ends the connection
DATA_CHUNK = 256 * 1024  # payload size writers use for data frames
MAX_ID = 0xFFFFFFFF


class FrameType:
    MESSAGE = 1
    DATA = 2


class Stream:
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    TAR = 3


STREAM_NAMES = {Stream.STDOUT: "stdout", Stream.STDERR: "stderr"}


class ErrorCode:
    """The `code` of error frames; the host maps them to its own errors."""

    BAD_FRAME = "bad_frame"  # undecodable frame (bad JSON, unknown frame type, empty frame)
    TOO_LARGE = "too_large"  # frame longer than MAX_FRAME
    BAD_REQUEST = "bad_request"  # a field missing or of the wrong type
    UNKNOWN_OP = "unknown_op"
    VERSION = "version"  # the host speaks a protocol version the agent does not
    BUSY = "busy"  # a request arrived while another one runs
    UNSAFE = "unsafe"  # a tar member escaping its target, a path with '..'
    NOT_FOUND = "not_found"
    FAILED = "failed"  # the operation itself failed (I/O error, permission)


class ProtocolError(Exception):
    """A request or answer that does not follow the protocol; `code` is an `ErrorCode`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Value:
    """A small immutable value with equality by fields (what a frozen dataclass would give)."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *map(repr, self._fields())))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({shown})"


class Message(_Value):
    __slots__ = ("body",)

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    @property
    def id(self) -> int | None:
        value = self.body.get("id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class Data(_Value):
    __slots__ = ("payload", "request_id", "stream")

    def __init__(self, request_id: int, stream: int, payload: bytes) -> None:
        self.request_id = request_id
        self.stream = stream
        self.payload = payload

    @property
    def end(self) -> bool:
        return not self.payload


class BadFrame(_Value):
    __slots__ = ("code", "fatal", "message")

    def __init__(self, code: str, message: str, fatal: bool = False) -> None:
        self.code = code
        self.message = message
        self.fatal = fatal  # the stream cannot be resynchronised: close the connection


Frame = Message | Data | BadFrame


def encode_message(body: dict[str, Any]) -> bytes:
    raw = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_FRAME:
        raise ValueError(f"message of {len(raw)} bytes exceeds the {MAX_FRAME} byte frame limit")
    return FRAME_HEADER.pack(len(raw) + 1, FrameType.MESSAGE) + raw


def encode_data(request_id: int, stream: int, payload: bytes) -> bytes:
    if len(payload) + DATA_HEADER.size > MAX_FRAME:
        raise ValueError(f"data payload of {len(payload)} bytes exceeds the frame limit")
    head = FRAME_HEADER.pack(len(payload) + DATA_HEADER.size + 1, FrameType.DATA)
    return head + DATA_HEADER.pack(request_id, stream) + payload


def encode_data_chunks(request_id: int, stream: int, payload: bytes) -> list[bytes]:
    """`payload` split into data frames of at most DATA_CHUNK bytes (no end marker)."""
    return [
        encode_data(request_id, stream, payload[start : start + DATA_CHUNK])
        for start in range(0, len(payload), DATA_CHUNK)
    ]


def request(request_id: int, op: str, **fields: Any) -> bytes:
    return encode_message({"id": request_id, "op": op, **fields})


def result(request_id: int | None, **fields: Any) -> bytes:
    return encode_message({"id": request_id, "type": "result", **fields})


def error(request_id: int | None, code: str, message: str) -> bytes:
    return encode_message({"id": request_id, "type": "error", "code": code, "message": message[:4000]})


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole frames back.

    Never raises on input: garbage becomes `BadFrame`s. After a fatal one the decoder stays closed.
    """

    def __init__(self, max_frame: int = MAX_FRAME, max_discard: int = MAX_DISCARD) -> None:
        self.max_frame = max_frame
        self.max_discard = max_discard
        self._buffer = bytearray()
        self._skip = 0
        self.broken = False

    def pending(self) -> bool:
        """Bytes of a frame not complete yet (or of one being skipped)."""
        return bool(self._buffer) or bool(self._skip)

    def feed(self, data: bytes) -> list[Frame]:
        if self.broken:
            return []
        self._buffer += data
        frames: list[Frame] = []
        while not self.broken:
            frame = self._next()
            if frame is None:
                break
            frames.append(frame)
        return frames

    def _next(self) -> Frame | None:
        if self._skip:
            dropped = min(self._skip, len(self._buffer))
            del self._buffer[:dropped]
            self._skip -= dropped
            if self._skip:
                return None
        if len(self._buffer) < FRAME_HEADER.size:
            return None
        length, kind = FRAME_HEADER.unpack_from(self._buffer)
        if length == 0:
            self.broken = True
            return BadFrame(ErrorCode.BAD_FRAME, "zero-length frame", fatal=True)
        body_length = length - 1
        if body_length > self.max_frame:
            return self._oversized(body_length)
        if len(self._buffer) < FRAME_HEADER.size + body_length:
            return None
        body = bytes(self._buffer[FRAME_HEADER.size : FRAME_HEADER.size + body_length])
        del self._buffer[: FRAME_HEADER.size + body_length]
        return decode_body(kind, body)

    def _oversized(self, body_length: int) -> BadFrame:
        text = f"frame of {body_length} bytes exceeds the {self.max_frame} byte limit"
        if body_length > self.max_discard:
            self.broken = True
            return BadFrame(ErrorCode.TOO_LARGE, text, fatal=True)
        del self._buffer[: FRAME_HEADER.size]
        self._skip = body_length
        return BadFrame(ErrorCode.TOO_LARGE, text)


def decode_body(kind: int, body: bytes) -> Frame:
    if kind == FrameType.MESSAGE:
        return _decode_message(body)
    if kind == FrameType.DATA:
        if len(body) < DATA_HEADER.size:
            return BadFrame(ErrorCode.BAD_FRAME, "data frame shorter than its header")
        request_id, stream = DATA_HEADER.unpack_from(body)
        return Data(request_id, stream, body[DATA_HEADER.size :])
    return BadFrame(ErrorCode.BAD_FRAME, f"unknown frame type {kind}")


def _decode_message(body: bytes) -> Frame:
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as problem:
        return BadFrame(ErrorCode.BAD_FRAME, f"message is not valid UTF-8 JSON: {problem}"[:300])
    if not isinstance(value, dict):
        return BadFrame(ErrorCode.BAD_FRAME, "message is not a JSON object")
    return Message(value)


# --- typed access to untrusted JSON fields (both sides validate what they receive) ----------------------

_MISSING: Any = object()


def _bad(key: str, wanted: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"field {key!r} must be {wanted}")


def get_str(body: dict[str, Any], key: str, default: Any = _MISSING) -> str:
    value = body.get(key, default)
    if value is _MISSING or not isinstance(value, str):
        raise _bad(key, "a string")
    return value


def get_int(body: dict[str, Any], key: str, default: Any = _MISSING) -> int:
    value = body.get(key, default)
    if value is _MISSING or not isinstance(value, int) or isinstance(value, bool):
        raise _bad(key, "an integer")
    return value


def get_opt_int(body: dict[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else get_int(body, key)


def get_opt_str(body: dict[str, Any], key: str) -> str | None:
    return None if body.get(key) is None else get_str(body, key)


def get_number(body: dict[str, Any], key: str, default: Any = _MISSING) -> float:
    value = body.get(key, default)
    if value is _MISSING or not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(key, "a number")
    return float(value)


def get_opt_number(body: dict[str, Any], key: str) -> float | None:
    return None if body.get(key) is None else get_number(body, key)


def get_bool(body: dict[str, Any], key: str, default: Any = _MISSING) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise _bad(key, "true or false")
    return value


def get_str_list(body: dict[str, Any], key: str, default: Any = _MISSING) -> list[str]:
    value = body.get(key, default)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _bad(key, "a list of strings")
    return value


def get_str_map(body: dict[str, Any], key: str, default: Any = _MISSING) -> dict[str, str]:
    value = body.get(key, default)
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise _bad(key, "an object of strings")
    return value


def check_relative_path(path: str) -> str:
    """`path` normalised as a relative POSIX path inside its root; refuses absolute paths and `..`."""
    if not path or "\0" in path or path.startswith("/"):
        raise ProtocolError(ErrorCode.UNSAFE, f"path {path!r} is not a relative path")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise ProtocolError(ErrorCode.UNSAFE, f"path {path!r} is empty or leaves its root")
    return "/".join(parts)
