"""`lg artifacts`: what a run's steps kept, listed or copied out; `lg cache`: the step cache's entries."""

from __future__ import annotations

import time
from pathlib import Path

import click

from lg.cli.output import emit_json, json_option, state_store
from lg.config.project import load_project_config
from lg.errors import ExitCode, InvalidInput
from lg.runner import artifacts as kept
from lg.runner.step_cache import CacheEntry, StepCache, cache_root

MIB = 1 << 20


@click.command()
@click.argument("run_id")
@click.argument("step_id", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Copy the artifacts to DIR/STEP/PATH (each checked against its recorded sha256).")
@json_option
def artifacts(run_id: str, step_id: str | None, out_dir: Path | None, as_json: bool) -> int:
    """List the artifacts a run kept (of all steps, or of STEP_ID), or copy them out with --out."""
    store = state_store()
    record = store.run(run_id)
    if step_id is not None and step_id not in {step.step_id for step in store.steps(record.id)}:
        raise InvalidInput(f"run {record.id} has no step {step_id!r}")
    found = kept.recorded(store.run_dir(record.id), step_id)
    written = kept.copy_out(store.run_dir(record.id), found, out_dir) if out_dir is not None else []
    if as_json:
        emit_json({"run": record.id, "artifacts": [artifact.to_json() for artifact in found],
                   "written": [str(path) for path in written]})
        return ExitCode.OK
    if not found:
        click.echo(f"run {record.id} kept no artifacts" + (f" of step {step_id}" if step_id else ""))
    for artifact in found:
        click.echo(f"{artifact.step:<20} {artifact.size:>12}  {artifact.sha256[:16]}  {artifact.path}")
    if out_dir is not None:
        click.echo(f"copied {len(written)} file(s) to {out_dir}")
    return ExitCode.OK


@click.group()
def cache() -> None:
    """The step cache: directories steps declare in `cache:`, kept between runs (state_dir/cache)."""


def _step_cache() -> StepCache:
    config = load_project_config()
    return StepCache(cache_root(config.state_dir), config.step_cache)


def _line(entry: CacheEntry) -> str:
    used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.used))
    return f"{entry.size / MIB:>9.1f} MiB  used {used}  {entry.key}  [{entry.scope[:12]}]  {', '.join(entry.paths)}"


@cache.command("ls")
@json_option
def cache_ls(as_json: bool) -> int:
    """List the cache's entries, most recently used first."""
    entries = _step_cache().entries()
    if as_json:
        emit_json([entry.to_json() for entry in entries])
        return ExitCode.OK
    for entry in entries:
        click.echo(_line(entry))
    total = sum(entry.size for entry in entries)
    click.echo(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {total / MIB:.1f} MiB")
    return ExitCode.OK


@cache.command("rm")
@click.argument("key", required=False)
@click.option("--all", "everything", is_flag=True, help="Remove every entry.")
def cache_rm(key: str | None, everything: bool) -> int:
    """Remove the entries of KEY (under every profile), or all of them with --all."""
    if (key is None) == (not everything):
        raise InvalidInput("lg cache rm: give a KEY or --all (not both)")
    removed = _step_cache().remove(None if everything else key)
    if key is not None and not removed:
        raise InvalidInput(f"lg cache rm: no cache entry has the key {key!r} (see `lg cache ls`)")
    click.echo(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}")
    return ExitCode.OK


@cache.command("prune")
@click.option("--max-size", "max_mib", type=click.IntRange(min=0),
              help="Keep at most this many MiB, removing the least recently used (default: lg.yaml's "
                   "step_cache.max_total_mib).")
@click.option("--older-than", "days", type=click.FloatRange(min=0), help="Remove entries unused for DAYS days.")
def cache_prune(max_mib: int | None, days: float | None) -> int:
    """Remove stale entries, then the least recently used past the size limit."""
    store = _step_cache()
    limit = (max_mib if max_mib is not None else store.limits.max_total_mib) * MIB
    removed = store.prune(limit, days * 86400 if days is not None else None)
    click.echo(f"removed {len(removed)} entr{'y' if len(removed) == 1 else 'ies'}, "
               f"{sum(entry.size for entry in removed) / MIB:.1f} MiB")
    return ExitCode.OK
