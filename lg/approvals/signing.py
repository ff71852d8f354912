"""Sign and verify approval decisions with OpenSSH (`ssh-keygen -Y`), against an `allowed_signers` file.

We do not hand-write signature code: OpenSSH already gives approvers a key they have and a format
(`allowed_signers`) teams already keep for signed git commits. The namespace keeps an approval signature from
being accepted as anything else (a git commit, a file signature) and vice versa.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from lg.errors import EnvironmentUnfit, InvalidInput

NAMESPACE = "lg-approval@luminaguard"
SSH_TIMEOUT = 30.0


class SignatureRefused(InvalidInput):
    """A signature that does not prove what it claims: refused, never treated as unsigned."""


def _ssh_keygen() -> str:
    path = shutil.which("ssh-keygen")
    if path is None:
        raise EnvironmentUnfit("ssh-keygen is not installed; it signs and verifies approvals",
                               fix="apt-get install openssh-client (scripts/setup does)")
    return path


def sign(payload: str, key: Path) -> str:
    """An armored SSH signature of `payload` made with the private key at `key` (or its public half, when the
    private key is held by ssh-agent)."""
    if not key.exists():
        raise InvalidInput(f"--key {key}: no such key file")
    result = subprocess.run(
        [_ssh_keygen(), "-q", "-Y", "sign", "-f", str(key), "-n", NAMESPACE],
        input=payload.encode(), capture_output=True, timeout=SSH_TIMEOUT, check=False,
    )
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise InvalidInput(f"--key {key}: ssh-keygen could not sign with it: {message}")
    return result.stdout.decode()


def signer_of(payload: str, signature: str, allowed_signers: Path) -> str:
    """The principal in `allowed_signers` whose key made `signature` over `payload`. Raises when none did."""
    if not allowed_signers.is_file():
        raise SignatureRefused(f"the policy's allowed_signers file {allowed_signers} does not exist: "
                               "no signature can be checked, so none is accepted")
    with tempfile.TemporaryDirectory(prefix="lg-verify-") as scratch:
        signature_file = Path(scratch) / "decision.sig"
        signature_file.write_text(signature)
        found = _run([_ssh_keygen(), "-Y", "find-principals", "-s", str(signature_file),
                      "-f", str(allowed_signers)], b"")
        if found.returncode != 0:
            raise SignatureRefused("the decision's signature was made by a key that is not in "
                                   f"{allowed_signers}")
        principals = found.stdout.decode().split()
        for principal in principals:
            verified = _run([_ssh_keygen(), "-Y", "verify", "-f", str(allowed_signers), "-I", principal,
                             "-n", NAMESPACE, "-s", str(signature_file)], payload.encode())
            if verified.returncode == 0:
                return principal
    raise SignatureRefused("the decision's signature does not match its content (it was altered after signing, "
                           "or signed for something else)")


def _run(argv: list[str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=SSH_TIMEOUT, check=False)
