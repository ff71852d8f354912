"""`lg serve --tls-cert --tls-key`: HTTPS through uvicorn's ssl options, and the page's cookies marked Secure."""

from __future__ import annotations

import ssl
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.server.conftest import Project, Server


def test_https_with_a_certificate(project: Project, serve: Callable[..., Server], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    project.pause()
    server = serve("--tls-cert", str(cert), "--tls-key", str(key))
    assert server.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(server.url + "/healthz", context=context, timeout=30) as answer:  # noqa: S310
        assert answer.status == 200
    with urllib.request.urlopen(server.url + "/", context=context, timeout=30) as answer:  # noqa: S310
        cookie = answer.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
