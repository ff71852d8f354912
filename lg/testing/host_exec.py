"""Run an ExecRequest on the host as the guest agent would run it in a VM (lg.guest.execute), for lg.testing.fake.

The request is read by the agent's own parser (defaults for PATH, HOME and LANG; a script runs under
/bin/sh -c; mkdirs), then its working directory, mkdirs, and the guest paths in its argv and env are mapped
into the fake VM's directory (lg.testing.guest_root). As in the agent, the command leads a session of its own;
its output is streamed as it comes; on its timeout or its exit its whole process group is killed, and the pipes
are drained for at most DRAIN_SECONDS; it reports exit code, signal, or 127/126 when it cannot be started.

Not applied, and said so in the result's `confinement`: uid and gid (the command runs as the test's user),
and everything under `confine` (capabilities, no_new_privs, cgroup limits, seccomp, AppArmor).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lg.guest.execute import DRAIN_SECONDS, Command, make_dirs, parse_command
from lg.guest.protocol import DATA_CHUNK, ProtocolError
from lg.testing.guest_root import GuestRoot
from lg.vm.agent_client import exec_fields
from lg.vm.api import AgentFailure, ExecRequest, ExecResult, OutputCallback

POLL_SECONDS = 0.05
GUEST_TMP = "/tmp"  # noqa: S108 - a path inside the (fake) guest
NOT_ENFORCED: Mapping[str, Any] = MappingProxyType({
    # What a result says instead of what a guest kernel enforced: nothing, and why.
    "enforced": False, "backend": "lg.testing.fake", "limits_hit": {},
    "reason": "lg.testing.fake runs commands on the host as the test's own user: uid, gid and confine not applied",
})


@dataclass(frozen=True)
class _Outcome:
    status: int  # as os.waitstatus_to_exitcode gives it: negative for a signal
    timed_out: bool


def run_on_host(root: GuestRoot, request: ExecRequest, on_output: OutputCallback | None,
                on_start: Callable[[int], None] | None = None) -> ExecResult:
    """`on_start` is told the command's process group (which dies with its fake VM: FakeVm.destroy)."""
    started = time.monotonic()
    command = _command(root, request)
    try:
        process = _spawn(command)
    except OSError as problem:
        return _spawn_failed(command, problem, on_output, started)
    if on_start is not None:
        on_start(process.pid)
    try:
        outcome = _wait(process, request.stdin, command.timeout, on_output)
    except BaseException:  # interrupted (Ctrl-C, lg cancel): the command dies with its "VM", as in a real one
        kill_group(process.pid)
        process.wait()
        raise
    code = outcome.status
    return ExecResult(exit_code=code if code >= 0 else None, signal=-code if code < 0 else None,
                      timed_out=outcome.timed_out, duration=time.monotonic() - started,
                      confinement=NOT_ENFORCED if _asked_confinement(request) else None)


def _command(root: GuestRoot, request: ExecRequest) -> Command:
    """The agent's reading of the request, with its guest paths mapped into the root (mkdirs first, so that
    the paths under them are recognised as guest paths)."""
    try:
        command = parse_command(exec_fields(request))
    except ProtocolError as problem:
        raise AgentFailure(f"guest agent: {problem.message}", problem.code) from None
    make_dirs([str(root.host_path(path)) for path in command.mkdirs], None, None)
    command.argv = [root.map_word(word) for word in command.argv]
    command.env = {name: root.map_word(value) for name, value in command.env.items()}
    command.env.setdefault("TMPDIR", str(root.host_path(GUEST_TMP)))  # mktemp lands in the VM's /tmp
    command.cwd = str(root.host_path(command.cwd or "/"))
    return command


def _spawn(command: Command) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command.argv,
        stdin=subprocess.PIPE if command.stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=command.cwd,
        env=command.env,
        start_new_session=True,  # its own process group, killed as a whole as the agent kills it
    )


def _spawn_failed(command: Command, problem: OSError, on_output: OutputCallback | None,
                  started: float) -> ExecResult:
    # As the agent reports it: 127 for "not found", 126 for "cannot execute", the reason on stderr.
    if on_output is not None:
        on_output("stderr", f"lg-agent: cannot run {command.argv[0]!r}: {problem}\n".encode())
    code = 127 if isinstance(problem, FileNotFoundError) else 126
    return ExecResult(exit_code=code, signal=None, timed_out=False, duration=time.monotonic() - started)


def _wait(process: subprocess.Popen[bytes], stdin: bytes | None, timeout: float | None,
          on_output: OutputCallback | None) -> _Outcome:
    """Stream its output until it has exited and its pipes closed (or were drained for DRAIN_SECONDS)."""
    feeder = _feed(process, stdin)
    deadline = time.monotonic() + timeout if timeout else None
    timed_out, drain_until = False, None
    with selectors.DefaultSelector() as selector:
        for pipe, name in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                selector.register(pipe, selectors.EVENT_READ, name)
        while True:
            exited = _exited(process.pid)
            if not exited and deadline is not None and time.monotonic() >= deadline:
                kill_group(process.pid)
                timed_out, deadline = True, None
            if exited and drain_until is None:
                kill_group(process.pid)  # what it left behind, before its pid (the group's id) can be reused
                drain_until = time.monotonic() + DRAIN_SECONDS
            if drain_until is not None and (not selector.get_map() or time.monotonic() >= drain_until):
                break
            _pump(selector, on_output)
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    status = process.wait()
    if feeder is not None:
        feeder.join(DRAIN_SECONDS)
    return _Outcome(status, timed_out)


def _pump(selector: selectors.BaseSelector, on_output: OutputCallback | None) -> None:
    if not selector.get_map():
        time.sleep(POLL_SECONDS)  # it closed its pipes and runs on
        return
    for key, _ in selector.select(POLL_SECONDS):
        try:
            chunk = os.read(key.fd, DATA_CHUNK)
        except BlockingIOError:
            continue
        if not chunk:
            selector.unregister(key.fileobj)
        elif on_output is not None:
            on_output(key.data, chunk)


def _feed(process: subprocess.Popen[bytes], stdin: bytes | None) -> threading.Thread | None:
    """Write stdin from a thread of its own (a command that reads it slowly must not stall its output)."""
    pipe = process.stdin
    if pipe is None:
        return None

    def feed() -> None:
        with contextlib.suppress(OSError):  # the command closed its stdin: the rest is not wanted
            pipe.write(stdin or b"")
        with contextlib.suppress(OSError):
            pipe.close()

    thread = threading.Thread(target=feed, name=f"lg-fake-stdin-{process.pid}", daemon=True)
    thread.start()
    return thread


def _exited(pid: int) -> bool:
    """Whether the process has exited, without reaping it (its pid stays taken while we kill its group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _asked_confinement(request: ExecRequest) -> bool:
    return request.confine is not None or request.uid is not None or request.gid is not None
