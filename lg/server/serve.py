"""Run the app under uvicorn: bind the socket ourselves (a clear error when the address is taken, and the real
port when asked for port 0), say where it listens, then serve until SIGINT or SIGTERM."""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.runs.postgres import redacted
from lg.server.state import ServerConfig

DEFAULT_LISTEN = "127.0.0.1:8570"


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise InvalidInput(f"--listen {text!r}: HOST:PORT, e.g. {DEFAULT_LISTEN} or [::1]:8570")
        return cls(host, int(port))


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path


def bind(listen: Listen) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as error:
        sock.close()
        why = "the address is in use" if error.errno == errno.EADDRINUSE else error.strerror
        raise EnvironmentUnfit(f"lg serve cannot listen on {listen.host}:{listen.port}: {why}",
                               fix="pick another --listen HOST:PORT, or stop what listens there") from error
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(config: ServerConfig, listen: Listen, tls: Tls | None) -> None:
    import uvicorn  # noqa: PLC0415 - heavy: only `lg serve` loads it

    from lg.server.app import create_app  # noqa: PLC0415

    app = create_app(config)
    sock = bind(listen)
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    shown = f"[{host}]" if ":" in host else host
    uvicorn_config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", proxy_headers=False,
        ssl_certfile=str(tls.cert) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
        timeout_graceful_shutdown=5)
    state = redacted(config.state_url) if config.state_url else config.state_dir
    print(f"lg serve: listening on {scheme}://{shown}:{port} (state {state})", flush=True)
    sys.stdout.flush()
    uvicorn.Server(uvicorn_config).run(sockets=[sock])
