"""pytest fixtures for the backends tested against the fake VMMs (tests/vm/conftest.py imports them; a test module
asks for `no_contract_violation` with pytestmark)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.guest.conftest import guest_bin
from tests.vm.fakevmm.bin import install_fakes
from tests.vm.fakevmm.contract import JOURNAL_ENV, read_journal

if TYPE_CHECKING:
    from tests.vm.conftest import ImageFiles


@pytest.fixture(scope="session")
def fake_bin(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return install_fakes(tmp_path_factory.mktemp("fake-bin"))


@pytest.fixture(scope="session")
def journal_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where every fake VMM of the session writes what it was sent (the environment reaches the processes lg
    starts); LG_GUEST_BIN points the stand-in guests' agents at the compiled guest helpers."""
    path = tmp_path_factory.mktemp("journal") / "requests.jsonl"
    saved = {name: os.environ.get(name) for name in (JOURNAL_ENV, "LG_GUEST_BIN")}
    os.environ[JOURNAL_ENV] = str(path)
    os.environ["LG_GUEST_BIN"] = str(guest_bin())
    yield path
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def no_contract_violation(journal_path: Path) -> Iterator[None]:
    """Fails the test if lg sent any fake VMM anything its contract does not allow."""
    before = len(read_journal(journal_path))
    yield
    new = read_journal(journal_path)[before:]
    broken = [f"{entry.get('request') or entry.get('argv')}: {problem}" for entry in new
              for problem in entry.get("violations", ())]
    assert broken == [], "lg sent what the published API does not allow:\n" + "\n".join(broken)


@pytest.fixture(scope="session")
def fake_image(tmp_path_factory: pytest.TempPathFactory) -> ImageFiles:
    """Files where a kernel, an initrd and a root disk would be: the fakes check they exist, never boot them."""
    from tests.vm.conftest import ImageFiles  # it imports this module

    directory = tmp_path_factory.mktemp("fake-image")
    for name in ("vmlinux", "initrd"):
        (directory / name).write_bytes(b"not a kernel: lg's fake VMMs never boot it\n")
    return ImageFiles("fake", "f" * 64, directory / "vmlinux", directory / "initrd", None, ("console=ttyS0",))


@pytest.fixture(scope="session")
def fake_disk_image(fake_image: ImageFiles) -> ImageFiles:
    from tests.vm.conftest import ImageFiles  # it imports this module

    disk = fake_image.kernel.parent / "rootfs.img"
    with disk.open("wb") as handle:
        handle.truncate(64 << 20)  # sparse: the backend's private copy must stay sparse too
    return ImageFiles("fake-disk", "e" * 64, fake_image.kernel, fake_image.initrd, disk, ("console=ttyS0",))
