"""The image recipe for Firecracker and Cloud Hypervisor (images/microvm.yaml): it loads, asks for an ext4 root
disk and the vsock driver, and every module it names resolves (dependencies first) in the kernel package it names,
when that package is in the local package cache (building the whole image takes minutes: not done here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lg.images.build import _module_closure
from lg.images.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_the_microvm_recipe_has_a_disk_root_and_the_vsock_driver() -> None:
    recipe = load_recipe(REPO / "images" / "microvm.yaml")
    assert recipe.root_kind == "disk"
    assert {"vmw_vsock_virtio_transport", "virtio_mmio", "virtio_pci", "virtio_blk"} <= set(recipe.modules)


def test_its_modules_resolve_in_the_cached_cloud_kernel(tmp_path: Path) -> None:
    cached = sorted((Path.home() / ".cache" / "luminaguard" / "debs").glob("linux-image-*-cloud-amd64_*.deb"))
    if not cached or shutil.which("dpkg-deb") is None or shutil.which("modinfo") is None:
        pytest.skip("no cloud kernel package in the local cache (lg image build fills it)")
    subprocess.run(["dpkg-deb", "-x", str(cached[-1]), str(tmp_path)], check=True)
    modules_dir = next((tmp_path / "lib" / "modules").iterdir())
    closure = _module_closure(modules_dir, load_recipe(REPO / "images" / "microvm.yaml").modules)
    assert closure.index("vsock") < closure.index("vmw_vsock_virtio_transport_common") \
        < closure.index("vmw_vsock_virtio_transport")
