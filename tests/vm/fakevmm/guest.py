"""The stand-in guest of the fake VMMs, and the hybrid vsock they put in front of it.

What is real: lg's guest agent (lg.guest.agent, the same code an image runs), serving lg's own agent protocol
over a connection that the fake VMM splices, byte for byte, to the host's hybrid vsock connection after the
`CONNECT <port>\\n` / `OK <port>\\n` handshake documented in Firecracker's docs/vsock.md (Cloud Hypervisor's vsock
is that design). A VMM's documented vsock behaviour is kept: nothing listening on the port closes the host's
connection; a snapshot's resume closes every connection while the guest's listener stays.

What is stood in, and how:
- no kernel, no VM: the agent runs on this host as a process in mount and UTS namespaces of its own (`unshare`),
  where /tmp is a directory of the VM's run directory: its commands see a private /tmp
  (the rest of / is the host's), and a hostname change stays inside;
- the clock: `set_clock` answers with the skew as the agent does, without setting the host's clock; `reseed`
  checks its input as the agent does, without crediting the host's entropy pool;
- "memory": a snapshot saves the files of that /tmp and /root, not the agent's process: a restored stand-in
  starts a new agent on them (lg reconnects after a restore anyway: the VMMs close vsock connections then);
- pause: SIGSTOP of the agent process, resume: SIGCONT;
- confinement: a command that asks for uid, gid or confine runs without them and its result says
  `enforced: False` (as lg.testing.fake's do): the host is not a guest kernel, and its cgroups are v1.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import select
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
GUEST_DIRS = ("tmp",)  # not /root: this host's Python lives under it
LINK_SOCKET = "agent-link.sock"
ACCEPT_WAIT = 0.5  # seconds a CONNECT waits for the agent's next connection before the VMM gives up on it


class StandInGuest:
    """The agent process and its private directories under `directory`."""

    def __init__(self, directory: Path, hostname: str) -> None:
        self.directory = directory
        self.hostname = hostname
        self.process: subprocess.Popen[bytes] | None = None
        for name in GUEST_DIRS:
            (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / "tmp").chmod(0o1777)
        self.link = listen_unix(directory / LINK_SOCKET)

    def start(self) -> None:
        command = ["unshare", "--mount", "--uts", "--propagation", "private", "--",
                   sys.executable, "-m", "tests.vm.fakevmm.guest", str(self.directory), self.hostname,
                   str(os.getpid())]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
               "LG_GUEST_BIN": os.environ.get("LG_GUEST_BIN", "")}
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)

    def accept(self, timeout: float) -> socket.socket | None:
        """The agent's next connection (it connects again after each disconnect), or None."""
        ready, _, _ = select.select([self.link], [], [], timeout)
        if not ready:
            return None
        conn, _ = self.link.accept()
        return conn

    def signal(self, number: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, number)

    def save(self, memory: Path) -> None:
        with tarfile.open(memory, "w") as archive:
            for name in GUEST_DIRS:
                archive.add(self.directory / name, arcname=name)

    def load(self, memory: Path) -> None:
        for name in GUEST_DIRS:
            shutil.rmtree(self.directory / name, ignore_errors=True)
        with tarfile.open(memory) as archive:
            archive.extractall(self.directory, filter="tar")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.link.close()


class HybridVsock:
    """The VMM's side of hybrid vsock: a unix socket at `path`; `CONNECT <port>\\n` reaches the guest's listener
    on that port (only the agent's here) and is answered `OK <host port>\\n`; then bytes flow both ways."""

    def __init__(self, path: Path, guest: StandInGuest, agent_port: int) -> None:
        self.path = path
        self.guest = guest
        self.agent_port = agent_port
        self.listener = listen_unix(path)
        self.connections: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.next_host_port = 1 << 30
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed:
            try:
                host, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(host,), daemon=True).start()

    def _handshake(self, host: socket.socket) -> None:
        line = _read_line(host)
        port = line[len(b"CONNECT "):].strip() if line.startswith(b"CONNECT ") and line.endswith(b"\n") else b""
        guest = None
        if port.isdigit() and int(port) == self.agent_port:
            guest = self.guest.accept(ACCEPT_WAIT)
        if guest is None:
            host.close()  # nothing listens on that port: the VMM ends the host's connection (docs/vsock.md)
            return
        with self.lock:
            self.next_host_port += 1
            host.sendall(b"OK %d\n" % self.next_host_port)
            self.connections.append((host, guest))
        _splice(host, guest)

    def reset(self) -> None:
        """A snapshot's resume: every connection is closed; the guest's listener stays."""
        with self.lock:
            connections, self.connections = self.connections, []
        for host, guest in connections:
            for sock in (host, guest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.reset()


def listen_unix(path: Path) -> socket.socket:
    """A listening unix socket at `path`, also when the path is longer than sun_path allows."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)
    sock.listen(8)
    return sock


def _read_line(sock: socket.socket, limit: int = 64) -> bytes:
    line = b""
    sock.settimeout(10)
    with contextlib.suppress(OSError):
        while not line.endswith(b"\n") and len(line) < limit:
            byte = sock.recv(1)
            if not byte:
                break
            line += byte
    sock.settimeout(None)
    return line


def _splice(a: socket.socket, b: socket.socket) -> None:
    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    threading.Thread(target=pump, args=(b, a), daemon=True).start()
    pump(a, b)


def _exit_with(parent: int) -> None:
    """Never outlive the fake VMM (PR_SET_PDEATHSIG would follow the VMM's *thread* that started the guest,
    an HTTP request's, which ends at once)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


# --- inside the namespaces: the agent ---------------------------------------------------------------------


def _stand_in_clock_and_entropy() -> None:
    from lg.guest import system
    from lg.guest.protocol import ErrorCode, ProtocolError, get_int, get_str

    def set_clock(body: dict[str, object]) -> dict[str, object]:
        return {"skew_ns": time.time_ns() - get_int(body, "epoch_ns")}  # the host's clock is left alone

    def reseed(body: dict[str, object]) -> dict[str, object]:
        try:
            entropy = bytes.fromhex(get_str(body, "entropy"))
        except ValueError as problem:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "entropy must be hex") from problem
        if not 16 <= len(entropy) <= system.MAX_ENTROPY_BYTES:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "entropy length out of range")
        return {"credited": False}

    system.set_clock = set_clock  # type: ignore[assignment]
    system.reseed = reseed  # type: ignore[assignment]


NOT_ENFORCED = {"enforced": False, "limits_hit": {},
                "reason": "lg's stand-in guest (tests/vm/fakevmm): the agent runs on the host, where uid, gid and "
                          "confine are not applied (no guest kernel, and this host's cgroups are v1)"}


def _stand_in_confinement() -> None:
    """A command that asks for uid, gid or confinement runs without them, and its result says so (as
    lg.testing.fake's do): the host is not the guest kernel that would enforce them."""
    from lg.guest import execute

    original_run, original_result = execute.run, execute.result

    def run(link: Any, request_id: int, command: Any, reaper: Any) -> None:
        if command.confinement is None and command.uid is None and command.gid is None:
            original_run(link, request_id, command, reaper)
            return
        command.confinement = command.uid = command.gid = None

        def reported(answer_id: int | None, **fields: Any) -> bytes:
            if answer_id == request_id:
                fields["confinement"] = NOT_ENFORCED
            return original_result(answer_id, **fields)

        execute.result = reported  # type: ignore[assignment]
        try:
            original_run(link, request_id, command, reaper)
        finally:
            execute.result = original_result  # type: ignore[assignment]

    execute.run = run  # type: ignore[assignment]


def _import_the_agent_now() -> None:
    """Every module of lg.guest, imported before /tmp is covered: a checkout (or its .venv) under /tmp, as a CI
    clone may be, would vanish from this namespace, and the agent imports some of its modules on use."""
    import lg.guest

    for module in pkgutil.iter_modules(lg.guest.__path__, "lg.guest."):
        importlib.import_module(module.name)


def main(argv: list[str]) -> int:
    directory, hostname = Path(argv[0]), argv[1]
    _exit_with(int(argv[2]))
    _import_the_agent_now()
    # Reach the link socket through a descriptor: /tmp is about to be covered.
    link_dir = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    bin_dir = os.environ.get("LG_GUEST_BIN")
    if bin_dir:  # the guest's helpers (lg-tree), copied to a tmpfs of this namespace (/tmp will be covered)
        subprocess.run(["mount", "-t", "tmpfs", "lg-guest-bin", "/mnt"], check=True)
        shutil.copytree(bin_dir, "/mnt/lg-bin")
        os.environ["LG_GUEST_BIN"] = "/mnt/lg-bin"
    for name in GUEST_DIRS:
        subprocess.run(["mount", "--bind", str(directory / name), f"/{name}"], check=True)
    socket.sethostname(hostname)
    _stand_in_clock_and_entropy()
    _stand_in_confinement()
    from lg.guest.agent import Agent, ready_banner
    from lg.guest.channel import UnixConnectEndpoint

    os.chdir("/")
    Agent(UnixConnectEndpoint(f"/proc/self/fd/{link_dir}/{LINK_SOCKET}", ready_banner())).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
