"""Running one command in the guest: stream its output as it comes, feed its stdin, enforce its timeout.

The command leads its own process group (a new session). When it exits, or its timeout passes, the whole
group is killed with SIGKILL, so background jobs never outlive the request; the pipes are then drained for
at most DRAIN_SECONDS (a process that escaped with setsid may hold them open). The agent may be PID 1, so
children are reaped with waitpid(-1) by a `Reaper` that also collects orphans; subprocess' own wait is never
used (it would race with that).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import signal
import subprocess
import time

from lg.guest import confine
from lg.guest.channel import Disconnected
from lg.guest.protocol import (
    DATA_CHUNK,
    BadFrame,
    Data,
    ErrorCode,
    Message,
    ProtocolError,
    Stream,
    encode_data,
    error,
    get_bool,
    get_int,
    get_opt_int,
    get_opt_number,
    get_opt_str,
    get_str_list,
    get_str_map,
    result,
)

DRAIN_SECONDS = 2.0
STDIN_BUFFER_LIMIT = 4 << 20  # stop reading the channel while this much stdin waits for the command
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from lg.guest.protocol import Frame

    class Link(Protocol):
        """What a long-running request needs from the agent's connection."""

        def fileno(self) -> int: ...

        def receive(self) -> list[Frame]: ...

        def send(self, data: bytes) -> None: ...

        def backlog(self) -> list[Frame]:
            """Frames already read from the connection but not handled yet."""
            ...

        def refuse(self, frame: Frame) -> None:
            """Answer a frame that is not part of the running request (busy / bad frame)."""
            ...


class Command:
    __slots__ = ("argv", "confinement", "cwd", "env", "gid", "mkdirs", "stdin", "timeout", "uid")

    def __init__(
        self, argv: list[str], env: dict[str, str], cwd: str | None, uid: int | None, gid: int | None,
        timeout: float | None, stdin: bool, confinement: confine.Confinement | None = None,
        mkdirs: list[str] | None = None,
    ) -> None:
        self.argv, self.env, self.cwd, self.uid, self.gid = argv, env, cwd, uid, gid
        self.timeout, self.stdin, self.confinement = timeout, stdin, confinement
        self.mkdirs = mkdirs or []  # created (owned by uid/gid) before the command starts


def parse_command(body: dict[str, Any]) -> Command:
    script = get_opt_str(body, "script")
    argv = ["/bin/sh", "-c", script] if script is not None else get_str_list(body, "argv")
    if not argv:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "exec needs a non-empty argv or a script")
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8", **get_str_map(body, "env", {})}
    timeout = get_opt_number(body, "timeout")
    if timeout is not None and timeout <= 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "timeout must be positive")
    mkdirs = get_str_list(body, "mkdirs") if "mkdirs" in body else []
    if any(not path.startswith("/") or "\0" in path or ".." in path.split("/") for path in mkdirs):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "mkdirs must be absolute paths without '..'")
    return Command(
        argv=argv,
        env=env,
        cwd=get_opt_str(body, "cwd"),
        uid=get_opt_int(body, "uid"),
        gid=get_opt_int(body, "gid"),
        timeout=timeout,
        stdin=get_bool(body, "stdin", False),
        confinement=confine.parse(body),
        mkdirs=mkdirs,
    )


def make_dirs(paths: list[str], uid: int | None, gid: int | None) -> None:
    """Create each path and its missing parents, owned by the command's user (as `mkdir -p` + `chown` would,
    without spawning two processes: each costs tens of milliseconds under TCG)."""
    for path in paths:
        missing = []
        current = path
        while not os.path.isdir(current):
            missing.append(current)
            current = os.path.dirname(current)
        for directory in reversed(missing):
            os.mkdir(directory)
            if uid is not None:
                os.lchown(directory, uid, gid if gid is not None else uid)


class Reaper:
    """Collects exit statuses with waitpid(-1): those of commands we watch, and orphans (as PID 1)."""

    def __init__(self) -> None:
        self._watched: set[int] = set()
        self._statuses: dict[int, int] = {}

    def watch(self, pid: int) -> None:
        self._watched.add(pid)

    def collect(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self._watched:
                self._statuses[pid] = status

    def status(self, pid: int) -> int | None:
        self.collect()
        status = self._statuses.pop(pid, None)
        if status is not None:
            self._watched.discard(pid)
        return status


def spawn(command: Command, cgroup: str | None = None) -> subprocess.Popen[bytes]:
    gid = command.gid if command.gid is not None else _primary_gid(command.uid)
    if command.confinement is not None and cgroup is not None:
        return _spawn_confined(command, command.confinement, cgroup, gid)
    identity: dict[str, Any] = {}
    if command.uid is not None:
        identity["user"] = command.uid
    if gid is not None:
        identity["group"] = gid
        identity["extra_groups"] = []
    return _popen(command, command.argv, (), identity)


def _spawn_confined(command: Command, confinement: confine.Confinement, cgroup: str,
                    gid: int | None) -> subprocess.Popen[bytes]:
    """The command through the confinement helper. Returns once the command itself runs (the helper's exec
    closed the status pipe), so what /proc shows of it then is what it runs with; raises OSError when the
    helper could not confine it, and nothing ran."""
    program = confine.seccomp_program(confinement.seccomp) if confinement.seccomp is not None else None
    status_read, status_write = os.pipe()
    passed = [status_write]
    try:
        seccomp_fd = None
        if program is not None:  # at most 32 KiB (BPF_MAXINSNS): the pipe holds it all
            seccomp_fd, seccomp_write = os.pipe()
            passed.append(seccomp_fd)
            try:
                os.write(seccomp_write, program)
            finally:
                os.close(seccomp_write)
        argv = confine.helper_argv(confinement, cgroup, command.uid, gid, status_write, seccomp_fd)
        process = _popen(command, [*argv, "--", *command.argv], tuple(passed), {})
    except BaseException:
        os.close(status_read)
        raise
    finally:
        for fd in passed:
            os.close(fd)
    report = _read_to_end(status_read, HELPER_DEADLINE)
    if report == b"":
        return process
    kill_group(process.pid)
    process.communicate()  # reaps it and closes its pipes
    if report is None:
        raise confine.SetupFailed(0, "the confinement helper did not finish")
    raise confine.helper_failure(report, process.returncode)


HELPER_DEADLINE = 60.0  # the helper makes a few dozen system calls; this only guards against a wedged guest


def _read_to_end(fd: int, timeout: float) -> bytes | None:
    """Everything until end of file, or None if the writer still holds it open after `timeout`; closes `fd`."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return bytes(data)
            data += chunk
    finally:
        os.close(fd)


def _popen(command: Command, argv: list[str], pass_fds: tuple[int, ...],
           identity: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if command.stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=command.cwd,
        env=command.env,
        start_new_session=True,
        pass_fds=pass_fds,
        **identity,
    )


def _primary_gid(uid: int | None) -> int | None:
    if uid is None:
        return None
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run(link: Link, request_id: int, command: Command, reaper: Reaper) -> None:
    """Run `command`, streaming its output as data frames, and answer with its exit status."""
    started = time.monotonic()
    if command.confinement is not None and command.confinement.apparmor is not None:
        confine.load_apparmor(command.confinement.apparmor)
    try:
        make_dirs(command.mkdirs, command.uid, command.gid)
    except OSError as problem:
        _spawn_failed(link, request_id, command, problem, started)
        return
    cgroup = confine.create_cgroup(f"cmd-{request_id}", command.confinement) if command.confinement else None
    try:
        try:
            process = spawn(command, cgroup)
        except (OSError, subprocess.SubprocessError) as problem:
            _spawn_failed(link, request_id, command, problem, started)
            return
        reaper.watch(process.pid)
        enforced = None
        if cgroup is not None and command.confinement is not None:
            enforced = {**confine.observed(process.pid), **confine.report(process.pid, command.confinement)}
        outcome = _Run(link, request_id, command, process, reaper).wait()
        if cgroup is not None:
            outcome["confinement"] = {**(enforced or {}), "limits_hit": confine.limit_events(cgroup)}
    finally:
        if cgroup is not None:
            confine.remove_cgroup(cgroup)
    link.send(result(request_id, duration=round(time.monotonic() - started, 6), **outcome))


def _spawn_failed(link: Link, request_id: int, command: Command, problem: Exception, started: float) -> None:
    # Reported as a shell would: 127 for "not found", 126 for "cannot execute", the reason on stderr.
    code = 127 if isinstance(problem, FileNotFoundError) else 126
    text = f"lg-agent: cannot run {command.argv[0]!r}: {problem}\n".encode()
    link.send(encode_data(request_id, Stream.STDERR, text))
    link.send(
        result(request_id, exit_code=code, signal=None, timed_out=False,
               duration=round(time.monotonic() - started, 6), spawn_error=str(problem))
    )


class _Run:
    """The poll loop of one running command."""

    def __init__(
        self, link: Link, request_id: int, command: Command, process: subprocess.Popen[bytes], reaper: Reaper
    ) -> None:
        self.link = link
        self.request_id = request_id
        self.process = process
        self.reaper = reaper
        self.deadline = time.monotonic() + command.timeout if command.timeout else None
        self.outputs: dict[int, int] = {}
        for pipe, stream in ((process.stdout, Stream.STDOUT), (process.stderr, Stream.STDERR)):
            if pipe is None:
                raise RuntimeError("spawn() always creates stdout and stderr pipes")
            os.set_blocking(pipe.fileno(), False)
            self.outputs[pipe.fileno()] = stream
        self.stdin_fd = process.stdin.fileno() if process.stdin else None
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
        self.stdin_pending = bytearray()
        self.stdin_done = not command.stdin
        self.pidfd = _pidfd(process.pid)
        self.status: int | None = None
        self.timed_out = False
        self.drain_until: float | None = None

    def wait(self) -> dict[str, Any]:
        try:
            while not self._finished():
                self._step()
        except Disconnected:
            kill_group(self.process.pid)
            self._reap_blocking()
            raise
        finally:
            self._close()
        return self._outcome()

    def _finished(self) -> bool:
        if self.status is None:
            return False
        return not self.outputs or (self.drain_until is not None and time.monotonic() >= self.drain_until)

    def _step(self) -> None:
        for frame in self.link.backlog():
            self._on_frame(frame)
        poller = select.poll()
        poller.register(self.link.fileno(), select.POLLIN if len(self.stdin_pending) < STDIN_BUFFER_LIMIT else 0)
        for fd in self.outputs:
            poller.register(fd, select.POLLIN)
        if self.stdin_fd is not None and self.stdin_pending:
            poller.register(self.stdin_fd, select.POLLOUT)
        if self.pidfd is not None and self.status is None:
            poller.register(self.pidfd, select.POLLIN)
        for fd, events in poller.poll(self._poll_ms()):
            self._handle(fd, events)
        self._check_exit()
        self._check_deadline()

    def _poll_ms(self) -> int:
        limits = [1.0 if self.pidfd is not None else 0.05]
        now = time.monotonic()
        for moment in (self.deadline if self.status is None else None, self.drain_until):
            if moment is not None:
                limits.append(max(0.0, moment - now))
        return int(min(limits) * 1000) + 1

    def _handle(self, fd: int, events: int) -> None:
        if fd == self.link.fileno():
            for frame in self.link.receive():
                self._on_frame(frame)
        elif fd in self.outputs:
            self._pump_output(fd)
        elif fd == self.stdin_fd:
            self._feed_stdin()

    def _pump_output(self, fd: int) -> None:
        try:
            chunk = os.read(fd, DATA_CHUNK)
        except BlockingIOError:
            return
        if chunk:
            self.link.send(encode_data(self.request_id, self.outputs[fd], chunk))
        else:
            del self.outputs[fd]

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Data) and frame.request_id == self.request_id and frame.stream == Stream.STDIN:
            self._queue_stdin(frame.payload)
        elif isinstance(frame, Message) and frame.body.get("op") == "signal":
            self._signal(frame)
        elif isinstance(frame, BadFrame) and frame.fatal:
            raise Disconnected(frame.message)
        else:
            self.link.refuse(frame)

    def _queue_stdin(self, payload: bytes) -> None:
        if self.stdin_done:
            return
        if payload:
            self.stdin_pending += payload
            self._feed_stdin()
        else:
            self.stdin_done = True
            self._feed_stdin()

    def _feed_stdin(self) -> None:
        if self.stdin_fd is None:
            return
        try:
            if self.stdin_pending:
                written = os.write(self.stdin_fd, self.stdin_pending)
                del self.stdin_pending[:written]
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin: the rest is not wanted
            self.stdin_pending.clear()
            self.stdin_done = True
        if self.stdin_done and not self.stdin_pending:
            self._close_stdin()

    def _close_stdin(self) -> None:
        if self.process.stdin is not None and self.stdin_fd is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            self.stdin_fd = None

    def _signal(self, frame: Message) -> None:
        request_id = frame.id
        try:
            target = get_int(frame.body, "target")
            number = get_int(frame.body, "signal")
            if target != self.request_id:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no running request {target}")
            if self.status is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.Signals(number))
        except (ProtocolError, ValueError) as problem:
            code = problem.code if isinstance(problem, ProtocolError) else ErrorCode.BAD_REQUEST
            self.link.send(error(request_id, code, str(problem)))
            return
        self.link.send(result(request_id))

    def _check_exit(self) -> None:
        if self.status is not None:
            return
        status = self.reaper.status(self.process.pid)
        if status is None:
            return
        # Kill what the command left behind before the pid can be reused (it is a zombie until now).
        kill_group(self.process.pid)
        self.status = status
        self.process.returncode = os.waitstatus_to_exitcode(status)  # keeps Popen from waiting later
        self.drain_until = time.monotonic() + DRAIN_SECONDS

    def _check_deadline(self) -> None:
        if self.status is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            kill_group(self.process.pid)
            self.deadline = None

    def _reap_blocking(self) -> None:
        while self.status is None:
            self._check_exit()
            if self.status is None:
                time.sleep(0.01)

    def _close(self) -> None:
        self._close_stdin()
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        if self.pidfd is not None:
            os.close(self.pidfd)

    def _outcome(self) -> dict[str, Any]:
        code = os.waitstatus_to_exitcode(self.status or 0)
        return {
            "exit_code": code if code >= 0 else None,
            "signal": -code if code < 0 else None,
            "timed_out": self.timed_out,
        }


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # older kernels: poll every 50 ms instead
