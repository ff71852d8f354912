"""The agent as a real process on the host, over a socketpair: requests, garbage, streaming, timeouts."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from lg.guest import AGENT_VERSION
from lg.guest.protocol import (
    PROTOCOL_VERSION,
    Data,
    ErrorCode,
    Message,
    Stream,
    encode_data,
    encode_message,
    request,
)
from lg.vm.api import AgentFailure, ExecRequest
from tests.guest.conftest import AgentProcess, agent_command, agent_env

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (changes uid in the agent)")


def collect(agent: AgentProcess, request_: ExecRequest) -> tuple[object, bytes, bytes]:
    out, err = bytearray(), bytearray()

    def on_output(stream: str, chunk: bytes) -> None:
        (out if stream == "stdout" else err).extend(chunk)

    result = agent.client.exec(request_, on_output)
    return result, bytes(out), bytes(err)


# --- hello and garbage ---------------------------------------------------------------------------------


def test_ready_banner_then_hello(agent: AgentProcess) -> None:
    banner = agent.raw.read()
    assert isinstance(banner, Message) and banner.body["type"] == "ready"
    answer = agent.raw.call(1, "hello", protocol=PROTOCOL_VERSION)
    assert answer["type"] == "result"
    assert answer["agent"] == AGENT_VERSION and answer["protocol"] == PROTOCOL_VERSION
    assert answer["kernel"] == os.uname().release and answer["uptime"] > 0


def test_client_hello(agent: AgentProcess) -> None:
    info = agent.client.hello(timeout=10)
    assert info.protocol == PROTOCOL_VERSION and info.agent == AGENT_VERSION


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (struct.pack(">IB", 6, 1) + b"{oops", ErrorCode.BAD_FRAME),
        (struct.pack(">IB", 3, 7) + b"{}", ErrorCode.BAD_FRAME),
        (encode_message({"op": "hello"}), ErrorCode.BAD_REQUEST),
        (encode_message({"id": 5, "op": "launch_missiles"}), ErrorCode.UNKNOWN_OP),
        (encode_message({"id": 5, "op": 3}), ErrorCode.BAD_REQUEST),
        (encode_message({"id": 5, "op": "exec", "argv": "not a list"}), ErrorCode.BAD_REQUEST),
        (encode_message({"id": 5, "op": "exec", "argv": ["true"], "timeout": -1}), ErrorCode.BAD_REQUEST),
        (encode_message({"id": 5, "op": "changes", "root": "/nowhere"}), ErrorCode.NOT_FOUND),
        (encode_message({"id": 5, "op": "get", "root": "relative", "paths": []}), ErrorCode.BAD_REQUEST),
    ],
)
def test_malformed_requests_get_an_error_and_the_agent_goes_on(
    agent: AgentProcess, raw: bytes, code: str
) -> None:
    agent.raw.send(raw)
    while True:
        frame = agent.raw.read()
        if isinstance(frame, Message) and frame.body.get("type") == "error":
            break
    assert frame.body["code"] == code
    assert agent.raw.call(9, "hello")["type"] == "result"


def test_oversized_frame_gets_an_error_and_the_connection_stays_usable(agent: AgentProcess) -> None:
    size = 3 << 20
    agent.raw.send(struct.pack(">IB", size + 1, 1) + b"x" * size)
    error = agent.raw.answer(None)
    assert error["code"] == ErrorCode.TOO_LARGE
    assert agent.raw.call(2, "hello")["type"] == "result"


def test_absurd_frame_length_closes_the_connection_cleanly(agent: AgentProcess) -> None:
    agent.raw.send(struct.pack(">IB", 0xFFFFFFF0, 1))
    assert agent.raw.answer(None)["code"] == ErrorCode.TOO_LARGE
    with pytest.raises((EOFError, ConnectionResetError)):
        agent.raw.read(timeout=10)
    assert agent.process.wait(timeout=10) == 0  # --fd serves one connection, then exits normally


def test_random_garbage_never_kills_the_agent(agent: AgentProcess) -> None:
    rng = __import__("random").Random(1234)
    for _ in range(50):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        agent.raw.send(struct.pack(">IB", len(body) + 1, rng.choice([1, 2, 3])) + body)
    assert agent.raw.call(77, "hello")["type"] == "result"
    assert agent.process.poll() is None


# --- exec ----------------------------------------------------------------------------------------------


def test_exec_exit_codes_output_and_signals(agent: AgentProcess) -> None:
    result, out, err = collect(agent, ExecRequest(script="echo out; echo err >&2; exit 3"))
    assert (result.exit_code, result.signal, out, err) == (3, None, b"out\n", b"err\n")  # type: ignore[attr-defined]
    result, _, _ = collect(agent, ExecRequest(script="kill -TERM $$"))
    assert (result.exit_code, result.signal) == (None, signal.SIGTERM)  # type: ignore[attr-defined]
    result, _, _ = collect(agent, ExecRequest(argv=("true",)))
    assert result.ok  # type: ignore[attr-defined]


def test_exec_env_cwd_and_stdin(agent: AgentProcess, tmp_path: Path) -> None:
    request_ = ExecRequest(
        script='printf "%s|%s|" "$GREETING" "$PWD"; cat', env={"GREETING": "hi there"},
        cwd=str(tmp_path), stdin=b"from stdin\x00\xff" * 50_000,
    )
    result, out, _ = collect(agent, request_)
    assert result.ok  # type: ignore[attr-defined]
    assert out == f"hi there|{tmp_path}|".encode() + b"from stdin\x00\xff" * 50_000


def test_exec_of_a_missing_program_is_127_with_a_reason(agent: AgentProcess) -> None:
    result, _, err = collect(agent, ExecRequest(argv=("/no/such/program",)))
    assert result.exit_code == 127 and b"cannot run" in err  # type: ignore[attr-defined]


def test_output_streams_while_the_command_runs(agent: AgentProcess) -> None:
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    result = agent.client.exec(
        ExecRequest(script="echo first; sleep 1.5; echo second"),
        lambda _stream, chunk: arrivals.append((time.monotonic() - started, chunk)),
    )
    finished = time.monotonic() - started
    assert result.ok
    assert b"".join(chunk for _, chunk in arrivals) == b"first\nsecond\n"
    assert arrivals[0][1] == b"first\n" and arrivals[0][0] < finished - 1.0


def test_large_output_arrives_complete_and_in_order(agent: AgentProcess) -> None:
    result, out, _ = collect(agent, ExecRequest(script="seq 1 300000"))
    assert result.ok  # type: ignore[attr-defined]
    assert out == b"".join(b"%d\n" % n for n in range(1, 300001))


def test_timeout_kills_the_whole_process_group(agent: AgentProcess, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 300 & echo $! > {pids}; sh -c 'sleep 300' & echo $! >> {pids}; sleep 300"
    started = time.monotonic()
    result, _, _ = collect(agent, ExecRequest(script=script, timeout=1.0))
    assert result.timed_out and result.signal == signal.SIGKILL  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
    for pid in map(int, pids.read_text().split()):
        assert _dies(pid), f"process {pid} survived the timeout"


def test_background_jobs_do_not_outlive_their_command(agent: AgentProcess, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result, _, _ = collect(agent, ExecRequest(script=f"sleep 300 > /dev/null 2>&1 & echo $! > {pid_file}"))
    assert result.ok  # type: ignore[attr-defined]
    assert _dies(int(pid_file.read_text()))


def test_a_request_while_busy_is_refused_and_signal_interrupts(agent: AgentProcess) -> None:
    raw = agent.raw
    raw.send(request(1, "exec", argv=["sleep", "30"]))
    raw.send(request(2, "hello"))
    assert raw.answer(2)["code"] == ErrorCode.BUSY
    raw.send(request(3, "signal", target=1, signal=signal.SIGINT))
    assert raw.answer(3)["type"] == "result"
    final = raw.answer(1)
    assert final["signal"] == signal.SIGINT and final["timed_out"] is False


@ROOT_ONLY
def test_exec_as_another_user(agent: AgentProcess) -> None:
    result, out, _ = collect(agent, ExecRequest(script="id -u; id -g", uid=65534, gid=65534))
    assert result.ok and out == b"65534\n65534\n"  # type: ignore[attr-defined]


def _dies(pid: int, within: float = 3.0) -> bool:
    """SIGKILL is asynchronous: give the process a moment to actually go."""
    deadline = time.monotonic() + within
    while _running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return status != "Z"


# --- files and changes ---------------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4000)
    (root / "empty").mkdir()
    (root / "link").symlink_to("src/pkg/mod.py")


def test_put_get_round_trip_is_byte_for_byte(agent: AgentProcess, tmp_path: Path) -> None:
    source, guest, back = tmp_path / "source", tmp_path / "guest", tmp_path / "back"
    source.mkdir()
    make_tree(source)
    stats = agent.client.put_tree(source, str(guest), None)
    regular = [p for p in source.rglob("*") if p.is_file() and not p.is_symlink()]
    assert stats.files == 4 and stats.bytes == sum(p.stat().st_size for p in regular)
    agent.client.get_paths(str(guest), ["src", "run.sh", "blob.bin", "link", "empty"], back)
    for name in ("src/pkg/mod.py", "run.sh", "blob.bin"):
        assert (back / name).read_bytes() == (source / name).read_bytes()
    assert (back / "run.sh").stat().st_mode & 0o777 == 0o755
    assert str((back / "link").readlink()) == "src/pkg/mod.py"
    assert (back / "empty").is_dir()


def test_put_respects_exclude(agent: AgentProcess, tmp_path: Path) -> None:
    source, guest = tmp_path / "source", tmp_path / "guest"
    source.mkdir()
    make_tree(source)
    agent.client.put_tree(source, str(guest), lambda rel: rel == "src" or rel.endswith(".bin"))
    assert sorted(p.name for p in guest.iterdir()) == ["empty", "link", "run.sh"]


def test_get_of_a_missing_path_is_an_error(agent: AgentProcess, tmp_path: Path) -> None:
    (tmp_path / "guest").mkdir()
    with pytest.raises(AgentFailure, match="not found: nope"):
        agent.client.get_paths(str(tmp_path / "guest"), ["nope"], tmp_path / "back")
    assert agent.client.call("hello")["type"] == "result"


def test_changes_against_the_manifest_taken_at_put(agent: AgentProcess, tmp_path: Path) -> None:
    source, guest = tmp_path / "source", tmp_path / "guest"
    source.mkdir()
    make_tree(source)
    agent.client.put_tree(source, str(guest), None)
    (guest / "new.txt").write_text("new\n")
    (guest / "src" / "pkg" / "mod.py").write_text("print('changed')\n")
    (guest / "blob.bin").unlink()
    (guest / "run.sh").chmod(0o644)
    (guest / "link").unlink()
    (guest / "link").symlink_to("run.sh")
    changes = {c["path"]: c for c in agent.client.call("changes", root=str(guest))["changes"]}
    assert sorted(changes) == ["blob.bin", "link", "new.txt", "run.sh", "src/pkg/mod.py"]
    assert changes["new.txt"]["kind"] == "created" and changes["new.txt"]["size"] == 4
    assert changes["blob.bin"]["kind"] == "deleted" and changes["blob.bin"]["old_mode"] == 0o644
    assert changes["run.sh"] == {**changes["run.sh"], "kind": "modified", "mode": 0o644, "old_mode": 0o755}
    assert changes["link"]["symlink_target"] == "run.sh"
    assert changes["src/pkg/mod.py"]["kind"] == "modified"


def test_changes_is_empty_when_nothing_changed(agent: AgentProcess, tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    make_tree(source)
    agent.client.put_tree(source, str(tmp_path / "guest"), None)
    assert agent.client.call("changes", root=str(tmp_path / "guest"), full=True)["changes"] == []


def test_put_refuses_an_escaping_archive_and_stays_in_step(agent: AgentProcess, tmp_path: Path) -> None:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("../escaped")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"bad"))
    raw = agent.raw
    raw.send(request(4, "put", dest=str(tmp_path / "guest")))
    raw.send(encode_data(4, Stream.TAR, buffer.getvalue()) + encode_data(4, Stream.TAR, b""))
    answer = raw.answer(4)
    assert answer["type"] == "error" and answer["code"] == ErrorCode.UNSAFE
    assert not (tmp_path / "escaped").exists()
    assert raw.call(5, "hello")["type"] == "result"


def test_stray_data_frames_are_ignored(agent: AgentProcess) -> None:
    agent.raw.send(encode_data(99, Stream.STDIN, b"late stdin"))
    assert agent.raw.call(6, "hello")["type"] == "result"


# --- connections ---------------------------------------------------------------------------------------


def test_agent_reconnects_after_the_host_goes_away(tmp_path: Path) -> None:
    """Like a virtio port whose host side disconnects: the agent reopens and serves the next host."""
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(20)
    process = subprocess.Popen(agent_command("--unix", str(path)), env=agent_env(), stderr=subprocess.DEVNULL)
    try:
        for round_ in range(3):
            conn, _ = listener.accept()
            conn.sendall(request(round_ + 1, "hello"))
            frames = _read_until_answer(conn, round_ + 1)
            assert frames[-1].body["type"] == "result"
            conn.close()  # mid-session disconnect: the agent must come back
    finally:
        process.kill()
        process.wait()
        listener.close()


def test_disconnect_during_exec_kills_the_command(tmp_path: Path) -> None:
    path, pid_file = tmp_path / "agent.sock", tmp_path / "pid"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(20)
    process = subprocess.Popen(agent_command("--unix", str(path)), env=agent_env(), stderr=subprocess.DEVNULL)
    try:
        conn, _ = listener.accept()
        conn.sendall(request(1, "exec", script=f"echo $$ > {pid_file}; exec sleep 300"))
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.close()
        conn, _ = listener.accept()  # the agent came back ...
        assert _dies(int(pid_file.read_text()))  # ... after killing the orphaned command
        conn.sendall(request(2, "hello"))
        assert _read_until_answer(conn, 2)[-1].body["type"] == "result"
        conn.close()
    finally:
        process.kill()
        process.wait()
        listener.close()


def _read_until_answer(conn: socket.socket, request_id: int) -> list[Message]:
    from lg.guest.protocol import FrameDecoder

    decoder, messages = FrameDecoder(), []
    conn.settimeout(20)
    while not messages or messages[-1].body.get("id") != request_id:
        data = conn.recv(65536)
        assert data, "agent closed the connection"
        messages += [f for f in decoder.feed(data) if isinstance(f, Message)]
    return messages


def test_data_frame_for_unknown_stream_ids_do_not_confuse_exec(agent: AgentProcess) -> None:
    raw = agent.raw
    raw.send(request(1, "exec", argv=["cat"], stdin=True))
    raw.send(encode_data(1, Stream.STDIN, b"abc") + encode_data(42, Stream.STDIN, b"zzz"))
    raw.send(encode_data(1, Stream.STDIN, b""))
    output = bytearray()
    while True:
        frame = raw.read()
        if isinstance(frame, Data) and frame.request_id == 1:
            output += frame.payload
        elif isinstance(frame, Message) and frame.body.get("id") == 1:
            break
    assert bytes(output) == b"abc" and frame.body["exit_code"] == 0


def test_shutdown_answers_then_stops(agent: AgentProcess) -> None:
    assert agent.raw.call(1, "shutdown", action="bogus")["code"] == ErrorCode.BAD_REQUEST
    assert agent.raw.call(2, "shutdown", action="exit")["type"] == "result"
    assert agent.process.wait(timeout=10) == 0


def test_reseed_and_set_clock_validate_their_input(agent: AgentProcess) -> None:
    assert agent.raw.call(1, "reseed", entropy="zz")["code"] == ErrorCode.BAD_REQUEST
    assert agent.raw.call(2, "reseed", entropy="ab")["code"] == ErrorCode.BAD_REQUEST
    answer = agent.raw.call(3, "reseed", entropy=os.urandom(32).hex())
    assert answer["type"] == "result" and isinstance(answer["credited"], bool)
    assert agent.raw.call(4, "set_clock", epoch_ns="now")["code"] == ErrorCode.BAD_REQUEST


def test_get_stops_at_the_host_size_limit(agent: AgentProcess, tmp_path: Path) -> None:
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "big").write_bytes(b"x" * 100_000)
    with pytest.raises(AgentFailure, match="exceeds 1000 bytes"):
        agent.client.get_paths(str(guest), ["big"], tmp_path / "back", max_bytes=1000)
    assert agent.client.call("hello")["type"] == "result"  # the stream was drained: still in step
