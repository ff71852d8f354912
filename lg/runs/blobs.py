"""The server's content-addressed blob store: held effects, step logs and artifacts of runs recorded through
`lg serve`, each a file named by the SHA-256 of its bytes (issue #17 item 2).

A name is 64 lowercase hex digits or it is refused, so no name can reach outside the directory. A blob is
written to a temporary file in the same directory, checked against its name, fsynced and renamed into place:
a reader sees the whole blob or none. Its digest is checked again on every read, so a blob altered on disk is
never served. Writing the same blob twice is harmless (content-addressed: same name, same bytes).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lg.errors import EnvironmentUnfit, InvalidInput

_NAME = re.compile(r"[0-9a-f]{64}")
CHUNK = 1024 * 1024


class BlobRefused(InvalidInput):
    """A blob name that is not a SHA-256, or bytes that are not what the name says."""


class BlobMissing(InvalidInput):
    """No blob of that name in the store."""


class BlobDamaged(EnvironmentUnfit):
    """A stored blob whose bytes no longer match its name (altered or truncated on disk)."""


def check_name(name: str) -> str:
    """A blob name: exactly 64 lowercase hex digits (the SHA-256 of its content), else refused."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise BlobRefused(f"blob name {str(name)[:80]!r}: a SHA-256 in 64 lowercase hex digits")
    return name


class BlobStore:
    """A directory of blobs, each named by its content's SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def put(self, name: str, chunks: Iterable[bytes]) -> bool:
        """Store `chunks` as blob `name`; True if it was new. Refused (nothing stored) when the bytes do not
        hash to `name`."""
        target = self.path(name)
        if target.is_file():
            return False
        self._mkdir()
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            digest = hashlib.sha256()
            with os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != name:
                raise BlobRefused(f"blob {name}: the bytes sent hash to {digest.hexdigest()}, not to the name; "
                                  "nothing was stored")
            Path(temporary).replace(target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._sync_directory()
        return True

    def put_bytes(self, data: bytes) -> str:
        name = hashlib.sha256(data).hexdigest()
        self.put(name, [data])
        return name

    def get(self, name: str) -> bytes:
        """The blob's bytes, checked against its name."""
        path = self.path(name)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no blob {name} in {self.root}") from None
        except OSError as error:
            raise EnvironmentUnfit(f"cannot read blob {path}: {error}") from error
        if hashlib.sha256(data).hexdigest() != name:
            raise BlobDamaged(f"blob {path} does not match its name (altered on disk); it is not served",
                              fix="restore it from a backup, or upload it again from the machine that made it")
        return data

    def copy_to(self, name: str, target: Path) -> None:
        """Write the blob (checked) to `target`, whose parent exists."""
        target.write_bytes(self.get(name))

    def _mkdir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EnvironmentUnfit(f"cannot create the blob store {self.root}: {error}",
                                   fix="check lg serve --blobs DIR is writable") from error

    def _sync_directory(self) -> None:
        """The rename is durable only once the directory is (a crash could otherwise lose a blob whose upload
        was acknowledged)."""
        descriptor = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
