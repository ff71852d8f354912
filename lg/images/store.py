"""The content-addressed image cache: `<cache_dir>/images/<digest>/` with vmlinux, initrd, rootfs.img, manifest.

`require_image` is what `lg run` calls: it must be fast, so it does not ask apt anything. It takes the newest
image built from the *current* recipe, init scripts and agent (the recipe key); `lg image build` is what
notices a new Debian package version and rebuilds.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.images.guest_init import DISK_INIT, DISK_STAGE2, INITRAMFS_INIT
from lg.images.recipe import Recipe, find_recipe
from lg.model import ProjectConfig

MANIFEST = "manifest.json"
BUILDER_VERSION = "3"
"""Bump when the builder's output changes for the same inputs."""

_LG_PACKAGE = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BuiltImage:
    name: str
    digest: str
    directory: Path
    kernel: Path
    initrd: Path
    rootfs: Path | None
    kernel_args: tuple[str, ...]
    created: float
    size_bytes: int
    recipe_key: str = ""
    kernel_release: str = ""


def agent_sources() -> list[tuple[str, bytes]]:
    """The guest agent's files as they go into an image: (path under /opt/lg, content), sorted."""
    files = [("lg/__init__.py", (_LG_PACKAGE / "__init__.py").read_bytes())]
    files += [(f"lg/guest/{path.name}", path.read_bytes()) for path in sorted((_LG_PACKAGE / "guest").glob("*.py"))]
    files += [(f"lg/guest/{path.name}", path.read_bytes()) for path in sorted((_LG_PACKAGE / "guest").glob("*.c"))]
    return files  # C sources are compiled into bin/ when the image is assembled (lg.images.build)


_required: dict[tuple[Path, str, str], BuiltImage] = {}


def recipe_key(recipe: Recipe) -> str:
    digest = hashlib.sha256()
    for part in (BUILDER_VERSION, recipe.text, INITRAMFS_INIT, DISK_INIT, DISK_STAGE2):
        digest.update(part.encode() + b"\0")
    for relative, content in agent_sources():
        digest.update(relative.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


class ImageStore:
    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.images_dir = cache_dir / "images"

    def list(self) -> list[BuiltImage]:
        if not self.images_dir.is_dir():
            return []
        images = [self._load(path) for path in self.images_dir.iterdir() if not path.name.startswith(".")]
        return sorted((image for image in images if image is not None), key=lambda i: i.created, reverse=True)

    def by_digest(self, digest: str) -> BuiltImage | None:
        return self._load(self.images_dir / digest)

    def find(self, name_or_digest_prefix: str) -> BuiltImage | None:
        """The newest image of a recipe name, or the image whose digest starts with the given prefix."""
        images = self.list()
        by_name = [image for image in images if image.name == name_or_digest_prefix]
        if by_name:
            return by_name[0]
        by_digest = [image for image in images if image.digest.startswith(name_or_digest_prefix)]
        return by_digest[0] if len(by_digest) == 1 else None

    def remove(self, name_or_digest: str) -> builtins.list[BuiltImage]:
        images = [i for i in self.list() if name_or_digest in (i.name, i.digest) or
                  (len(name_or_digest) >= 6 and i.digest.startswith(name_or_digest))]
        if not images:
            raise InvalidInput(f"no built image {name_or_digest!r} (see `lg image ls`)")
        for image in images:
            shutil.rmtree(image.directory)
        self._remove_unused_bases()
        return images

    def prune(self, current_keys: dict[str, str]) -> builtins.list[BuiltImage]:
        """Remove every image but the newest one built from its recipe as it is now (`current_keys`: recipe name
        to recipe key), then the base layers no remaining image uses."""
        kept: set[str] = set()
        removed = []
        for image in self.list():  # newest first
            if image.name not in kept and current_keys.get(image.name) == image.recipe_key:
                kept.add(image.name)
            else:
                shutil.rmtree(image.directory)
                removed.append(image)
        self._remove_unused_bases()
        return removed

    def _remove_unused_bases(self) -> None:
        bases = self.cache_dir / "bases"
        if not bases.is_dir():
            return
        used = {json.loads((image.directory / MANIFEST).read_text()).get("base") for image in self.list()}
        for base in bases.iterdir():
            if base.name not in used and not base.name.startswith("."):
                shutil.rmtree(base, ignore_errors=True)

    @staticmethod
    def _load(directory: Path) -> BuiltImage | None:
        """None for anything that is not a complete image (a missing or unreadable manifest)."""
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        rootfs = directory / "rootfs.img"
        files = [directory / "vmlinux", directory / "initrd", *([rootfs] if rootfs.exists() else [])]
        if not all(path.is_file() for path in files):
            return None
        return BuiltImage(
            name=manifest["name"],
            digest=manifest["digest"],
            directory=directory,
            kernel=directory / "vmlinux",
            initrd=directory / "initrd",
            rootfs=rootfs if rootfs.exists() else None,
            kernel_args=tuple(manifest.get("kernel_args", ())),
            created=manifest.get("created", 0.0),
            size_bytes=sum(path.stat().st_blocks * 512 for path in files),
            recipe_key=manifest.get("recipe_key", ""),
            kernel_release=manifest.get("kernel_release", ""),
        )


def require_image(config: ProjectConfig, name: str) -> BuiltImage:
    """The newest image built from recipe `name` as it is now (recipe, init scripts and agent unchanged).
    Found once per process and recipe version: every step asks, and listing the cache reads each image's
    manifest (about 6 ms a step with a few dozen cached builds)."""
    key = recipe_key(find_recipe(config, name))
    known = _required.get((config.cache_dir, name, key))
    if known is not None and (known.directory / MANIFEST).is_file():  # not pruned since
        return known
    for image in ImageStore(config.cache_dir).list():
        if image.name == name and image.recipe_key == key:
            _required[(config.cache_dir, name, key)] = image
            return image
    raise EnvironmentUnfit(f"image {name!r} is not built (or its recipe or the guest agent changed)",
                           fix=f"lg image build {name}")
