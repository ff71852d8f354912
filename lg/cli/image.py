"""`lg image build | ls | rm`: guest images from images/ recipes, in a content-addressed cache."""

from __future__ import annotations

import time
from typing import Any

import click

from lg.cli.output import emit_json, json_option
from lg.errors import ExitCode, LgError
from lg.images.store import BuiltImage  # light: this module loads only when `lg image` runs
from lg.model import ProjectConfig


@click.group()
def image() -> None:
    """Build, list and remove guest images."""


@image.command()
@click.argument("names", nargs=-1)
@json_option
def build(names: tuple[str, ...], as_json: bool) -> int:
    """Build NAMES (default: the project's image). Cached by digest: an unchanged recipe builds nothing.

    Safe to interrupt: a half-built image is never used.
    """
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.images.build import build_image  # noqa: PLC0415

    config = load_project_config()
    progress = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    built = [build_image(config, name, progress) for name in (names or (config.image,))]
    if as_json:
        emit_json([_view(img) for img in built])
    return ExitCode.OK


@image.command(name="ls")
@json_option
def list_images(as_json: bool) -> int:
    """List built images: name, digest, size, age, and whether it matches its recipe as it is now."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.images.store import ImageStore  # noqa: PLC0415

    config = load_project_config()
    images = ImageStore(config.cache_dir).list()
    current = {name: _current_key(config, name) for name in {img.name for img in images}}
    rows = [{**_view(img), "current": current[img.name] == img.recipe_key} for img in images]
    if as_json:
        emit_json(rows)
        return ExitCode.OK
    if not rows:
        click.echo("no images built yet (lg image build tiny default)")
    for row in rows:
        state = "current" if row["current"] else "stale"
        click.echo(f"{row['name']:<12} {row['digest'][:12]}  {row['size_mb']:>6.0f} MB  "
                   f"{_age(row['created']):>8}  {state}")
    return ExitCode.OK


@image.command()
@click.argument("name_or_digest")
@json_option
def rm(name_or_digest: str, as_json: bool) -> int:
    """Remove every built image of a recipe NAME, or the one with DIGEST (a prefix of 6+ characters)."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.images.store import ImageStore  # noqa: PLC0415

    removed = ImageStore(load_project_config().cache_dir).remove(name_or_digest)
    if as_json:
        emit_json([_view(img) for img in removed])
    else:
        for img in removed:
            click.echo(f"removed {img.name} {img.digest[:12]}")
    return ExitCode.OK


@image.command()
@json_option
def prune(as_json: bool) -> int:
    """Remove images that no longer match their recipe (and older builds), keeping the current one of each,
    and the pool's template snapshots of images that are gone or of an older template format."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.images.store import ImageStore  # noqa: PLC0415
    from lg.pool.templates import prune_templates  # noqa: PLC0415

    config = load_project_config()
    store = ImageStore(config.cache_dir)
    removed = store.prune({name: key for name in {i.name for i in store.list()}
                           if (key := _current_key(config, name)) is not None})
    templates = prune_templates(config.cache_dir / "snapshots", {i.digest for i in store.list()})
    if as_json:
        emit_json({"images": [_view(img) for img in removed], "templates": templates})
    else:
        click.echo(f"removed {len(removed)} image(s), {sum(i.size_bytes for i in removed) / 1e6:.0f} MB; "
                   f"{len(templates)} template snapshot(s), {sum(t['bytes'] for t in templates) / 1e6:.0f} MB")
    return ExitCode.OK


def _current_key(config: ProjectConfig, name: str) -> str | None:
    from lg.images.recipe import find_recipe  # noqa: PLC0415
    from lg.images.store import recipe_key  # noqa: PLC0415

    try:
        return recipe_key(find_recipe(config, name))
    except LgError:  # the recipe is gone or broken: its images are stale
        return None


def _view(img: BuiltImage) -> dict[str, Any]:
    return {"name": img.name, "digest": img.digest, "directory": str(img.directory),
            "size_mb": round(img.size_bytes / 1e6, 1), "created": img.created, "rootfs": img.rootfs is not None,
            "kernel_release": img.kernel_release}


def _age(created: float) -> str:
    seconds = time.time() - created
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
