"""Which `lg serve` a command talks to, and with which token.

The server: `--server URL`, else LG_SERVER, else lg.yaml `server:`. The token: `--token-file FILE`, else LG_TOKEN.
A token is never read from lg.yaml (it is a secret; lg.yaml is in version control). A server without a token is
an error before anything is sent: every API call but /healthz needs one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lg.errors import InvalidInput

SERVER_ENV = "LG_SERVER"
TOKEN_ENV = "LG_TOKEN"  # noqa: S105 - the name of the variable, not a token
CA_ENV = "LG_SERVER_CA"  # a PEM file of the CA that signed the server's certificate (an https URL of your own CA)


@dataclass(frozen=True)
class ServerSettings:
    url: str  # scheme://host[:port][/prefix], without a trailing slash
    token: str
    ca_file: Path | None = None

    def __repr__(self) -> str:  # never the token
        return f"ServerSettings(url={self.url!r})"


def resolve_server(option_url: str | None, token_file: Path | None, configured_url: str | None,
                   *, where: str = "lg.yaml") -> ServerSettings | None:
    """The server a command was pointed at, or None to use the local state store."""
    url, source = _first((option_url, "--server"), (os.environ.get(SERVER_ENV), SERVER_ENV),
                         (configured_url, f"{where}: server"))
    if url is None:
        if token_file is not None:
            raise InvalidInput("--token-file is given but no server: add --server URL (or set LG_SERVER)")
        return None
    checked = check_url(url, source)
    token = _token(token_file)
    ca = os.environ.get(CA_ENV)
    return ServerSettings(checked, token, Path(ca) if ca else None)


def check_url(url: str, source: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(f"{source}: {url!r} is not a server URL (http[s]://HOST[:PORT][/PREFIX], as printed by "
                           "lg serve)")
    return url.strip().rstrip("/")


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidInput(f"--token-file {token_file}: cannot read it ({error})") from None
        if not text:
            raise InvalidInput(f"--token-file {token_file}: the file is empty (it holds the token printed by "
                               "`lg token create`)")
        return text
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise InvalidInput("a server is set but no API token: set LG_TOKEN or give --token-file FILE (the token "
                           "`lg token create NAME --role ROLE` printed on the server's machine)")
    return token


def _first(*candidates: tuple[str | None, str]) -> tuple[str | None, str]:
    for value, source in candidates:
        if value:
            return value, source
    return None, ""
