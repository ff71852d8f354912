"""The guest agent: `python3 -m lg.guest.agent` (the image's init runs it, usually as PID 1).

It serves one request at a time over one connection, answers anything malformed with an error frame and
goes on, reopens its channel whenever the host goes away, and reaps every zombie in the guest.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable

from lg.guest import AGENT_VERSION, execute, files, manifest, system
from lg.guest.channel import (
    PORT_NAME,
    Connection,
    Disconnected,
    FdEndpoint,
    UnixConnectEndpoint,
    VirtioPortEndpoint,
    VsockListenEndpoint,
)
from lg.guest.protocol import (
    PROTOCOL_VERSION,
    BadFrame,
    Data,
    ErrorCode,
    Frame,
    Message,
    ProtocolError,
    encode_message,
    error,
    get_bool,
    get_str,
    result,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from lg.guest.channel import Endpoint

    Handler = Callable[["Agent", "Session", int, dict[str, Any]], dict[str, Any] | None]

IDLE_POLL_MS = 1000
USAGE = """usage: python3 -m lg.guest.agent [--port NAME | --device PATH | --unix PATH | --fd N | --vsock PORT]

  --port NAME    virtio-serial port to serve (default lg.agent), found through /sys/class/virtio-ports
  --device PATH  a character device to use instead of looking the port up
  --unix PATH    connect to this unix socket, again after each disconnect (host-side tests)
  --fd N         serve one already connected file descriptor, then exit
  --vsock PORT   listen on this AF_VSOCK port (Firecracker, Cloud Hypervisor)

With none of them, the kernel command line decides: `lg.agent=vsock:PORT` listens on vsock (what the Firecracker
and Cloud Hypervisor backends pass), anything else serves the virtio-serial port (QEMU)."""


def log(text: str) -> None:
    print(f"lg-agent: {text}", file=sys.stderr, flush=True)


class Session:
    """One connection to a host; implements `execute.Link` for the request running on it."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.queue: deque[Frame] = deque()

    def fileno(self) -> int:
        return self.connection.fileno()

    def receive(self) -> list[Frame]:
        return self.connection.read_frames()

    def backlog(self) -> list[Frame]:
        frames = list(self.queue)
        self.queue.clear()
        return frames

    def next_frame(self, timeout: float, on_idle: Callable[[], None]) -> Frame | None:
        if not self.queue:
            select.select([self.fileno()], [], [], timeout)
            on_idle()
            self.queue.extend(self.receive())
        return self.queue.popleft() if self.queue else None

    def send(self, data: bytes) -> None:
        self.connection.send(data)

    def refuse(self, frame: Frame) -> None:
        if isinstance(frame, BadFrame):
            self.send(error(None, frame.code, frame.message))
            if frame.fatal:
                raise Disconnected(frame.message)
        elif isinstance(frame, Message):
            self.send(error(frame.id, ErrorCode.BUSY, "another request is running on this connection"))
        # Stray data frames (stdin for a command that already ended) are dropped without a word.


class Agent:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.reaper = execute.Reaper()
        self.manifests: dict[str, manifest.Manifest] = {}
        self.stopping = False

    def serve_forever(self) -> None:
        for connection in self.endpoint.connections():
            try:
                self.serve(Session(connection))
            except Disconnected:
                pass
            except Exception as problem:  # never die: log it, drop this connection, wait for the next
                log(f"connection failed: {problem!r}")
            finally:
                connection.close()
            if self.stopping:
                return

    def serve(self, session: Session) -> None:
        while not self.stopping:
            frame = session.next_frame(IDLE_POLL_MS / 1000, on_idle=self.reaper.collect)
            if frame is not None:
                self.dispatch(session, frame)

    def dispatch(self, session: Session, frame: Frame) -> None:
        if isinstance(frame, Data):
            return  # stdin or tar data of a request that already ended
        if isinstance(frame, BadFrame):
            session.refuse(frame)
            return
        request_id = frame.id
        try:
            if request_id is None:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "a request needs an integer 'id'")
            op = get_str(frame.body, "op")
            handler = HANDLERS.get(op)
            if handler is None:
                raise ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}")
            answer = handler(self, session, request_id, frame.body)
        except ProtocolError as problem:
            session.send(error(request_id, problem.code, problem.message))
            return
        except OSError as problem:
            session.send(error(request_id, ErrorCode.FAILED, str(problem)))
            return
        except (Disconnected, SystemExit):
            raise
        except Exception as problem:
            session.send(error(request_id, ErrorCode.FAILED, f"agent error: {problem!r}"))
            return
        if answer is not None:
            session.send(result(request_id, **answer))


# --- handlers -----------------------------------------------------------------------------------------


def op_hello(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent": AGENT_VERSION,
        "protocol": PROTOCOL_VERSION,
        "kernel": os.uname().release,
        "uptime": system.uptime(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": sys.version.split()[0],
    }


def op_exec(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> None:
    execute.run(session, request_id, execute.parse_command(body), agent.reaper)


def op_put(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    stats, taken = files.receive_tree(session, request_id, body)
    answer: dict[str, Any] = {"files": stats.files, "bytes": stats.bytes}
    if get_bool(body, "manifest", True):
        # lg-tree hashed the files as it wrote them: the manifest cost no second read.
        agent.manifests[files.check_guest_dir(get_str(body, "dest"))] = taken
        answer["manifest"] = manifest.summary(taken)
    return answer


def op_get(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    stats = files.send_paths(session, request_id, body)
    return {"files": stats.files, "bytes": stats.bytes}


def op_snapshot(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    root = files.check_guest_dir(get_str(body, "root"))
    agent.manifests[root] = manifest.take(root)
    return manifest.summary(agent.manifests[root])


def op_changes(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    root = files.check_guest_dir(get_str(body, "root"))
    before = agent.manifests.get(root)
    if before is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no manifest of {root}: put a workspace there first")
    after = manifest.take(root, previous=None if get_bool(body, "full", False) else before)
    return {"changes": manifest.diff(before, after)}


def op_set_clock(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return system.set_clock(body)


def op_reseed(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return system.reseed(body)


def op_identity(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return system.set_identity(body)


def op_network(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    from lg.guest import network  # noqa: PLC0415 - most VMs have no network

    return network.configure(body)


def op_signal(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> dict[str, Any]:
    raise ProtocolError(ErrorCode.NOT_FOUND, "no command is running")


def op_shutdown(agent: Agent, session: Session, request_id: int, body: dict[str, Any]) -> None:
    action = get_str(body, "action", "poweroff")
    if action not in ("poweroff", "exit"):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown shutdown action {action!r}")
    session.send(result(request_id))
    agent.stopping = True
    if os.getpid() == 1:  # init must not exit (the kernel would panic): power off instead
        system.power_off()


HANDLERS: dict[str, Handler] = {
    "hello": op_hello,
    "exec": op_exec,
    "put": op_put,
    "get": op_get,
    "snapshot": op_snapshot,
    "changes": op_changes,
    "set_clock": op_set_clock,
    "reseed": op_reseed,
    "network": op_network,
    "identity": op_identity,
    "signal": op_signal,
    "shutdown": op_shutdown,
}


# --- entry point --------------------------------------------------------------------------------------


def ready_banner() -> bytes:
    return encode_message({"id": None, "type": "ready", "agent": AGENT_VERSION, "protocol": PROTOCOL_VERSION})


class Options:
    """Where to serve (argparse would cost a noticeable part of a TCG guest's boot)."""

    __slots__ = ("device", "fd", "port", "unix", "vsock")

    def __init__(self) -> None:
        self.port = PORT_NAME
        self.device: str | None = None
        self.unix: str | None = None
        self.fd: int | None = None
        self.vsock: int | None = None


def parse_args(argv: list[str]) -> Options:
    options, pending, seen = Options(), list(argv), 0
    while pending:
        flag = pending.pop(0)
        if flag in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        name = flag[2:] if flag.startswith("--") else ""
        if name not in Options.__slots__ or not pending:
            raise SystemExit(f"{USAGE}\nlg-agent: bad arguments at {flag!r}")
        value = pending.pop(0)
        try:
            setattr(options, name, int(value) if name in ("fd", "vsock") else value)
        except ValueError:
            raise SystemExit(f"lg-agent: --{name} needs a number, not {value!r}") from None
        seen += 1
    if seen > 1:
        raise SystemExit(f"{USAGE}\nlg-agent: give at most one of the options")
    return options


def vsock_port_from(cmdline: str) -> int | None:
    """The port of `lg.agent=vsock:PORT` on a kernel command line, if it is there and well formed."""
    value = system.boot_parameters(cmdline).get("agent", "")
    kind, _, port = value.partition(":")
    if kind != "vsock" or not port.isdigit() or not 0 < int(port) < 1 << 32:
        return None
    return int(port)


def kernel_cmdline() -> str:
    try:
        with open("/proc/cmdline") as handle:
            return handle.read()
    except OSError:
        return ""


def endpoint_from(options: Options, cmdline: str | None = None) -> Endpoint:
    banner = ready_banner()
    if options.vsock is None and options.fd is None and not options.unix and options.device is None \
            and options.port == PORT_NAME:
        options.vsock = vsock_port_from(kernel_cmdline() if cmdline is None else cmdline)
    if options.fd is not None:
        return FdEndpoint(options.fd, banner)
    if options.unix:
        return UnixConnectEndpoint(options.unix, banner)
    if options.vsock is not None:
        return VsockListenEndpoint(options.vsock, banner)
    return VirtioPortEndpoint(banner, name=options.port, device=options.device)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    system.apply_boot_settings()
    endpoint = endpoint_from(options)
    log(f"agent {AGENT_VERSION} (protocol {PROTOCOL_VERSION}) serving on {endpoint.describe()}")
    started = time.monotonic()
    Agent(endpoint).serve_forever()
    log(f"stopped after {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
