"""A stand-in guest image for tests that run steps on lg.testing.fake: the runner looks its image up in the cache
(lg.images.store.require_image) before it leases a VM, and the fake never boots one. Building the real image
takes minutes and needs Debian packages; this takes a millisecond."""

from __future__ import annotations

import hashlib
import json
import time

from lg.images.recipe import find_recipe
from lg.images.store import MANIFEST, BuiltImage, ImageStore, recipe_key
from lg.model import ProjectConfig

PLACEHOLDER = b"lg.testing stand-in: not a kernel\n"


def stand_in_image(config: ProjectConfig, name: str) -> BuiltImage:
    """A cache entry for recipe `name` as it is now, whose kernel and initrd are placeholders: `require_image`
    finds it, lg.testing.fake never reads them. Any other backend would fail to boot it."""
    key = recipe_key(find_recipe(config, name))
    digest = hashlib.sha256(f"lg.testing stand-in {name} {key}".encode()).hexdigest()
    store = ImageStore(config.cache_dir)
    directory = store.images_dir / digest
    directory.mkdir(parents=True, exist_ok=True)
    for file in ("vmlinux", "initrd"):
        (directory / file).write_bytes(PLACEHOLDER)
    manifest = {"name": name, "digest": digest, "recipe_key": key, "created": time.time(),
                "kernel_args": ["console=ttyS0"], "stand_in": True}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))
    image = store.by_digest(digest)
    if image is None:  # the store's format moved on: this helper must follow it
        raise AssertionError(f"the image store does not read the stand-in image in {directory}")
    return image
