"""Guest image recipes (images/NAME.yaml): which kernel, which modules, which root filesystem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lg.config.project import resolve_named_file
from lg.config.schema_check import check_schema
from lg.config.yamlsource import load_yaml
from lg.errors import InvalidInputs
from lg.model import ProjectConfig

RootKind = Literal["initramfs", "disk"]

PACKAGE_PATTERN = "^[a-z0-9][a-z0-9+.-]+$"
MODULE_PATTERN = "^[a-z0-9_-]+$"


def recipe_schema() -> dict[str, Any]:
    packages = {"type": "array", "items": {"type": "string", "pattern": PACKAGE_PATTERN}, "uniqueItems": True}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://luminaguard.dev/schemas/image-recipe.schema.json",
        "title": "LuminaGuard guest image recipe",
        "type": "object",
        "additionalProperties": False,
        "required": ["kernel", "rootfs"],
        "properties": {
            "$schema": {"type": "string"},
            "description": {"type": "string"},
            "kernel": {
                "type": "object",
                "additionalProperties": False,
                "required": ["package"],
                "properties": {
                    "package": {"type": "string", "pattern": PACKAGE_PATTERN,
                                "description": "a Debian kernel package or metapackage (linux-image-cloud-amd64)"},
                    "args": {"type": "array", "items": {"type": "string", "pattern": r"^\S+$"}},
                },
            },
            "modules": {
                "type": "array", "items": {"type": "string", "pattern": MODULE_PATTERN}, "uniqueItems": True,
                "description": "kernel modules loaded at boot, in this order (their dependencies first)",
            },
            "rootfs": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "packages"],
                "properties": {
                    "kind": {"enum": ["initramfs", "disk"],
                             "description": "initramfs: all in RAM; disk: an ext4 root with a per-VM overlay"},
                    "packages": {**packages, "minItems": 1,
                                 "description": "Debian packages; their dependencies are added"},
                    "exclude": {**packages, "description": "dependencies not to install (e.g. docs)"},
                    "disk_mib": {"type": "integer", "minimum": 64, "maximum": 65536},
                    "prune": {"type": "array", "items": {"type": "string", "pattern": r"^[^/.][^\s]*$"},
                              "description": "paths removed from the root after unpacking"},
                },
            },
        },
    }


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    text: str  # the recipe's bytes, as read: part of the image digest
    description: str
    kernel_package: str
    kernel_args: tuple[str, ...]
    modules: tuple[str, ...]
    root_kind: RootKind
    packages: tuple[str, ...]
    exclude: tuple[str, ...]
    disk_mib: int
    prune: tuple[str, ...]


def load_recipe(path: Path) -> Recipe:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "an image recipe must be a mapping")
    errors = check_schema(doc, recipe_schema())
    if errors:
        raise InvalidInputs(errors)
    data = doc.data
    rootfs = data["rootfs"]
    return Recipe(
        name=path.stem,
        path=path,
        text=path.read_text(),
        description=data.get("description", ""),
        kernel_package=data["kernel"]["package"],
        kernel_args=tuple(data["kernel"].get("args", ("console=ttyS0", "quiet", "panic=-1", "mitigations=off"))),
        modules=tuple(data.get("modules", ())),
        root_kind=rootfs["kind"],
        packages=tuple(rootfs["packages"]),
        exclude=tuple(rootfs.get("exclude", ())),
        disk_mib=rootfs.get("disk_mib", 2048),
        prune=tuple(rootfs.get("prune", ())),
    )


def find_recipe(config: ProjectConfig, name: str) -> Recipe:
    return load_recipe(resolve_named_file(name, config.paths.images, config.root, "image recipe"))
