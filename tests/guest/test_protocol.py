"""The wire protocol: framing, limits and garbage, without any process."""

from __future__ import annotations

import ast
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lg.guest import protocol
from lg.guest.protocol import (
    BadFrame,
    Data,
    ErrorCode,
    FrameDecoder,
    Message,
    ProtocolError,
    check_relative_path,
    encode_data,
    encode_message,
)

GUEST_DIR = Path(__file__).resolve().parents[2] / "lg" / "guest"


def test_message_and_data_round_trip() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(encode_message({"id": 7, "op": "hello"}) + encode_data(7, 1, b"\x00\xffbytes"))
    assert frames == [Message({"id": 7, "op": "hello"}), Data(7, 1, b"\x00\xffbytes")]
    assert frames[0].id == 7
    assert not frames[1].end


def test_frames_split_at_every_byte_boundary() -> None:
    stream = encode_message({"id": 1, "op": "x"}) + encode_data(1, 2, b"abc") + encode_data(1, 2, b"")
    decoder = FrameDecoder()
    frames = [frame for byte in stream for frame in decoder.feed(bytes([byte]))]
    assert frames == [Message({"id": 1, "op": "x"}), Data(1, 2, b"abc"), Data(1, 2, b"")]
    assert frames[2].end


def test_oversized_frame_is_skipped_and_the_stream_stays_usable() -> None:
    decoder = FrameDecoder(max_frame=100, max_discard=10_000)
    oversized = struct.pack(">IB", 5001, 1) + b"x" * 5000
    frames = decoder.feed(oversized[:3000])
    assert len(frames) == 1 and isinstance(frames[0], BadFrame)
    assert frames[0].code == ErrorCode.TOO_LARGE and not frames[0].fatal
    assert decoder.feed(oversized[3000:] + encode_message({"id": 2})) == [Message({"id": 2})]


def test_absurd_length_breaks_the_connection() -> None:
    decoder = FrameDecoder(max_frame=100, max_discard=1000)
    frames = decoder.feed(struct.pack(">IB", 0xFFFFFFF0, 1))
    assert frames == [BadFrame(ErrorCode.TOO_LARGE, frames[0].message, fatal=True)]  # type: ignore[union-attr]
    assert decoder.broken
    assert decoder.feed(encode_message({"id": 1})) == []


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (struct.pack(">IB", 4, 1) + b"{x}", "not valid UTF-8 JSON"),
        (struct.pack(">IB", 3, 1) + b"[]", "not a JSON object"),
        (struct.pack(">IB", 3, 1) + b"\xff\xfe", "not valid UTF-8 JSON"),
        (struct.pack(">IB", 3, 9) + b"{}", "unknown frame type"),
        (struct.pack(">IB", 3, 2) + b"ab", "shorter than its header"),
    ],
)
def test_malformed_frames_become_bad_frames(raw: bytes, fragment: str) -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(raw + encode_message({"id": 3}))
    assert isinstance(frames[0], BadFrame) and fragment in frames[0].message
    assert frames[1] == Message({"id": 3})


def test_deeply_nested_json_is_a_bad_frame_not_a_crash() -> None:
    body = b"[" * 200_000
    frames = FrameDecoder().feed(struct.pack(">IB", len(body) + 1, 1) + body)
    assert isinstance(frames[0], BadFrame)


def test_zero_length_frame_is_fatal() -> None:
    frames = FrameDecoder().feed(b"\x00\x00\x00\x00\x01")
    assert isinstance(frames[0], BadFrame) and frames[0].fatal


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_decode_without_raising(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=512, max_discard=4096)
    for frame in decoder.feed(data):
        assert isinstance(frame, Message | Data | BadFrame)


def test_encoders_refuse_what_the_peer_would_refuse() -> None:
    with pytest.raises(ValueError, match="frame limit"):
        encode_data(1, 1, b"x" * protocol.MAX_FRAME)
    with pytest.raises(ValueError, match="frame limit"):
        encode_message({"blob": "x" * protocol.MAX_FRAME})


@pytest.mark.parametrize(
    ("path", "expected"),
    [("a/b", "a/b"), ("./a//b/", "a/b"), ("a/./b", "a/b")],
)
def test_relative_paths_are_normalised(path: str, expected: str) -> None:
    assert check_relative_path(path) == expected


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../../x", "a/..", ".", "a\0b"])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        check_relative_path(path)
    assert refused.value.code == ErrorCode.UNSAFE


def test_field_accessors_check_types() -> None:
    body = {"n": 1, "flag": True, "s": "x", "list": ["a"], "map": {"k": "v"}}
    assert protocol.get_int(body, "n") == 1
    assert protocol.get_bool(body, "flag") is True
    assert protocol.get_str_list(body, "list") == ["a"]
    assert protocol.get_str_map(body, "map") == {"k": "v"}
    assert protocol.get_opt_int(body, "missing") is None
    for getter, key in [(protocol.get_int, "flag"), (protocol.get_str, "n"), (protocol.get_str_list, "map")]:
        with pytest.raises(ProtocolError):
            getter(body, key)


def test_the_guest_package_imports_only_the_standard_library() -> None:
    """The agent runs on the guest's bare Python: nothing from PyPI, nothing from lg outside lg.guest."""
    for source in GUEST_DIR.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                allowed = name == "lg.guest" or name.startswith("lg.guest.") or top == "__future__"
                assert allowed or top in sys.stdlib_module_names, f"{source.name} imports {name}"


def test_the_agent_does_not_import_heavy_modules_at_startup() -> None:
    """Guest Pythons may compile the stdlib at every boot: typing, dataclasses, argparse cost ~0.6 s under TCG."""
    import subprocess

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import lg.guest.agent; "
        "print(' '.join(m for m in ('typing', 'dataclasses', 'argparse', 'inspect') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code, str(GUEST_DIR.parents[1])],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
