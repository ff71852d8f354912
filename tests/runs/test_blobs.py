"""The content-addressed blob store: names are SHA-256s or refused, bytes are checked on write and on read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lg.runs.blobs import BlobDamaged, BlobMissing, BlobRefused, BlobStore, check_name

DATA = b"held effect\n" * 100
NAME = hashlib.sha256(DATA).hexdigest()


def test_a_blob_is_stored_under_its_digest_and_read_back(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    assert store.put(NAME, [DATA[:7], DATA[7:]]) is True
    assert (tmp_path / "blobs" / NAME).read_bytes() == DATA
    assert store.get(NAME) == DATA
    assert store.put(NAME, [DATA]) is False  # idempotent: the same bytes again change nothing
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [NAME]


@pytest.mark.parametrize("name", ["../etc/passwd", NAME.upper(), NAME[:63], NAME + "0", "", f"{NAME[:-1]}/",
                                  "a" * 63 + "\n"])
def test_anything_but_a_sha256_is_refused_as_a_name(tmp_path: Path, name: str) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobRefused):
        check_name(name)
    with pytest.raises(BlobRefused):
        store.put(name, [DATA])
    assert not (tmp_path / "blobs").exists() or not any((tmp_path / "blobs").iterdir())


def test_bytes_that_do_not_hash_to_the_name_are_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobRefused, match="nothing was stored"):
        store.put(NAME, [DATA + b"x"])
    assert list((tmp_path / "blobs").iterdir()) == []  # not even the temporary file


def test_a_blob_altered_on_disk_is_never_served(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    store.put(NAME, [DATA])
    (tmp_path / "blobs" / NAME).write_bytes(DATA[:-1])
    with pytest.raises(BlobDamaged):
        store.get(NAME)
    with pytest.raises(BlobMissing):
        store.get("0" * 64)
