"""Fixtures for tests that boot real VMs: the guest image, the QEMU backend, one shared VM."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from lg.errors import LgError
from lg.pool.wire import WireImage
from lg.vm.api import GuestImage, Vm, VmSpec
from lg.vm.qemu import QemuHypervisor
from tests.vm.fakevmm.fixtures import (  # noqa: F401 - fixtures of the fake VMMs' tests
    fake_bin,
    fake_disk_image,
    fake_image,
    journal_path,
    no_contract_violation,
)

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = REPO / ".lg" / "test-state"  # persists the KVM verdict between runs (gitignored)
NO_IMAGE = "no guest image: run `lg image build tiny` (or set LG_TEST_IMAGE, or LG_TEST_KERNEL and LG_TEST_INITRD)"


@dataclass(frozen=True)
class ImageFiles(WireImage):
    """A GuestImage given by paths (the dev escape hatch, and how images cross into helper processes)."""

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in data.items()})

    @classmethod
    def from_json(cls, text: str) -> ImageFiles:
        data = json.loads(text)
        return cls(
            name=data["name"], digest=data["digest"], kernel=Path(data["kernel"]), initrd=Path(data["initrd"]),
            rootfs=Path(data["rootfs"]) if data["rootfs"] else None, kernel_args=tuple(data["kernel_args"]),
        )

    @classmethod
    def of(cls, image: GuestImage) -> ImageFiles:
        return cls(image.name, image.digest, image.kernel, image.initrd, image.rootfs, tuple(image.kernel_args))


def find_test_image() -> ImageFiles | None:
    kernel = os.environ.get("LG_TEST_KERNEL")
    if kernel:
        rootfs = os.environ.get("LG_TEST_ROOTFS")
        return ImageFiles(
            name="test", digest="test", kernel=Path(kernel), initrd=Path(os.environ["LG_TEST_INITRD"]),
            rootfs=Path(rootfs) if rootfs else None,
            kernel_args=tuple(os.environ.get("LG_TEST_KERNEL_ARGS", "console=ttyS0 quiet panic=-1").split()),
        )
    try:
        from lg.config.project import load_project_config
        from lg.images.store import require_image
    except ImportError:
        return None
    try:
        return ImageFiles.of(require_image(load_project_config(REPO), os.environ.get("LG_TEST_IMAGE", "tiny")))
    except LgError:
        return None


@pytest.fixture(scope="session")
def image() -> ImageFiles:
    found = find_test_image()
    if found is None:
        pytest.skip(NO_IMAGE)
    return found


@pytest.fixture(scope="session")
def hypervisor() -> QemuHypervisor:
    return QemuHypervisor(state_dir=STATE_DIR)


def accelerator() -> str:
    return os.environ.get("LG_TEST_ACCELERATOR", "auto")


@pytest.fixture
def spec(image: ImageFiles, tmp_path: Path) -> VmSpec:
    return VmSpec(image=image, accelerator=accelerator(), run_dir=tmp_path / "vms", hostname="lg-test")


@pytest.fixture(scope="module")
def shared_vm(hypervisor: QemuHypervisor, image: ImageFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    run_dir = tmp_path_factory.mktemp("shared-vm")
    with hypervisor.boot(VmSpec(image=image, accelerator=accelerator(), run_dir=run_dir)) as vm:
        yield vm
