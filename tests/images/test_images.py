"""Image recipes, cache keys and the store (the build itself is exercised by every VM test)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.images import build
from lg.images.recipe import load_recipe
from lg.images.store import MANIFEST, ImageStore, recipe_key, require_image
from lg.model import ProjectConfig
from tests.conftest import REPO

Write = Callable[[str, str], Path]


def test_shipped_recipes_load() -> None:
    tiny = load_recipe(REPO / "images/tiny.yaml")
    default = load_recipe(REPO / "images/default.yaml")
    assert (tiny.root_kind, default.root_kind) == ("initramfs", "disk")
    assert "git" in default.packages and "virtio_console" in tiny.modules


def test_recipe_errors_point_at_the_line(write: Write) -> None:
    path = write("bad.yaml", "kernel: {package: linux-image-cloud-amd64}\nrootfs:\n  kind: floppy\n  packages: []\n")
    with pytest.raises(InvalidInput) as caught:
        load_recipe(path)
    text = str(caught.value)
    assert f"{path}:3:9: rootfs.kind: 'floppy' is not one of 'initramfs', 'disk'" in text
    assert f"{path}:4:13: rootfs.packages" in text


def test_recipe_key_follows_recipe_text(write: Write) -> None:
    tiny = load_recipe(REPO / "images/tiny.yaml")
    assert recipe_key(tiny) == recipe_key(load_recipe(REPO / "images/tiny.yaml"))
    assert recipe_key(replace(tiny, text=tiny.text + "\n# changed\n")) != recipe_key(tiny)


def test_recipe_key_follows_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = load_recipe(REPO / "images/tiny.yaml")
    before = recipe_key(tiny)
    from lg.images import store

    original = store.agent_sources
    monkeypatch.setattr(store, "agent_sources", lambda: [*original(), ("lg/guest/new.py", b"x = 1\n")])
    assert recipe_key(tiny) != before


def fake_image(root: Path, digest: str, name: str = "tiny", *, manifest: bool = True, key: str = "k") -> Path:
    directory = root / "images" / digest
    directory.mkdir(parents=True)
    (directory / "vmlinux").write_bytes(b"\x7fELF")
    (directory / "initrd").write_bytes(b"cpio")
    if manifest:
        (directory / MANIFEST).write_text(json.dumps({"name": name, "digest": digest, "created": 1.0,
                                                       "recipe_key": key, "base": "b1"}))
    return directory


def test_store_ignores_incomplete_images_and_removes(tmp_path: Path) -> None:
    fake_image(tmp_path, "a" * 64)
    fake_image(tmp_path, "b" * 64, manifest=False)  # an interrupted build
    (tmp_path / "images" / ".tmp-cccccc-1").mkdir()
    store = ImageStore(tmp_path)
    assert [image.digest for image in store.list()] == ["a" * 64]
    assert store.find("tiny") is not None and store.find("aaaaaa") is not None and store.find("b") is None
    (tmp_path / "bases" / "b1").mkdir(parents=True)
    (tmp_path / "bases" / "unused").mkdir()
    assert [image.digest for image in store.remove("tiny")] == ["a" * 64]
    assert store.list() == [] and not (tmp_path / "bases" / "unused").exists()
    with pytest.raises(InvalidInput, match="no built image"):
        store.remove("tiny")


def test_require_image_wants_the_current_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lg.config.project import load_project_config

    config: ProjectConfig = replace(load_project_config(REPO), cache_dir=tmp_path)
    with pytest.raises(EnvironmentUnfit) as caught:
        require_image(config, "tiny")
    assert caught.value.fix == "lg image build tiny"
    fake_image(tmp_path, "d" * 64, key="stale-key")
    with pytest.raises(EnvironmentUnfit, match="not built"):
        require_image(config, "tiny")
    fake_image(tmp_path, "e" * 64, key=recipe_key(load_recipe(REPO / "images/tiny.yaml")))
    assert require_image(config, "tiny").digest == "e" * 64


def test_an_interrupted_stage_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "images" / ("f" * 64)
    with pytest.raises(KeyboardInterrupt), build._staging(final) as out:
        (out / "vmlinux").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not final.exists() and list((tmp_path / "images").iterdir()) == []


def test_kernel_payload_formats() -> None:
    import lzma
    import zlib

    elf = b"\x7fELF" + bytes(100)
    assert build._decompress(lzma.compress(elf, format=lzma.FORMAT_XZ), "k") == elf
    gz = zlib.compressobj(wbits=31)
    assert build._decompress(gz.compress(elf) + gz.flush(), "k") == elf
    with pytest.raises(EnvironmentUnfit, match="unknown kernel compression"):
        build._decompress(b"nonsense", "k")


def test_prune_keeps_the_newest_current_image_of_each_recipe(tmp_path: Path) -> None:
    fake_image(tmp_path, "a" * 64, key="current")
    fake_image(tmp_path, "b" * 64, key="stale")
    fake_image(tmp_path, "c" * 64, name="default", key="gone")
    store = ImageStore(tmp_path)
    removed = store.prune({"tiny": "current"})
    assert sorted(image.digest[0] for image in removed) == ["b", "c"]
    assert [image.digest for image in store.list()] == ["a" * 64]
