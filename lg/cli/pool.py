"""`lg pool serve` and `lg pool status`: the shared warm pool daemon and what it holds."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from lg.cli.output import emit_json, json_option
from lg.errors import ExitCode, InvalidInput

ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])?:(?P<port>\d{1,5})$")
socket_option = click.option("--socket", "socket_path", type=click.Path(path_type=Path),
                             help="The daemon's unix socket (default: $LG_POOL_SOCKET, or /run/luminaguard/pool.sock "
                                  "for root).")


@click.group()
def pool() -> None:
    """The warm VM pool: a daemon shared by every `lg run` on this host, and its metrics."""


@pool.command()
@socket_option
@click.option("--metrics", "metrics_address", metavar="[HOST]:PORT",
              help="Serve Prometheus metrics on http://HOST:PORT/metrics (HOST defaults to 127.0.0.1).")
def serve(socket_path: Path | None, metrics_address: str | None) -> int:
    """Run the pool daemon in the foreground until SIGTERM or Ctrl-C; `lg run` uses it while it runs.
    On start it reaps what a crashed lg or daemon left (VMs, cgroups, network namespaces, half-saved templates);
    on stop it destroys every VM it made."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.pool.daemon import PoolDaemon  # noqa: PLC0415
    from lg.pool.wire import default_socket  # noqa: PLC0415

    if metrics_address is not None and not ADDRESS.match(metrics_address):
        raise InvalidInput(f"--metrics {metrics_address!r}: expected [HOST]:PORT, such as 127.0.0.1:9464")
    daemon = PoolDaemon(load_project_config(), socket_path or default_socket())
    reaped = daemon.reap()
    daemon.bind()
    click.echo(f"lg pool: serving {daemon.socket_path} (owner only); VMs under {daemon.run_parent}")
    if any(reaped.values()):
        click.echo("lg pool: reaped leftovers: " + ", ".join(f"{len(v)} {k}" for k, v in reaped.items() if v))
    if metrics_address is not None:
        try:
            host, port = daemon.start_metrics(metrics_address)
        except OSError as error:
            daemon.close()
            raise InvalidInput(f"--metrics {metrics_address}: cannot listen there: {error.strerror}") from None
        click.echo(f"lg pool: metrics on http://{host}:{port}/metrics")
    daemon.serve_forever()
    click.echo("lg pool: stopped; every VM it made is destroyed")
    return ExitCode.OK


@pool.command()
@click.argument("pipelines", metavar="PIPELINE...", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
def prepare(pipelines: tuple[Path, ...], as_json: bool) -> int:
    """Build the pool templates the steps of each PIPELINE restore their VMs from, ahead of their first run
    (scripts/setup does it for the shipped examples). Templates already there are kept.
    Exit 0 when each is ready, 5 when one could not be built (its steps then cold-boot)."""
    from lg.inputs.run_inputs import load_run_inputs  # noqa: PLC0415
    from lg.runner.prepare import prepare_templates  # noqa: PLC0415

    results = []
    for path in pipelines:
        inputs = load_run_inputs(path, with_images=True)
        for prepared in prepare_templates(inputs):
            results.append({"pipeline": str(path), **asdict(prepared)})
            if not as_json:
                timing = f" in {prepared.seconds:.1f}s" if prepared.outcome == "built" else ""
                click.echo(f"{path}: template {prepared.label} for {', '.join(prepared.steps)}: "
                           f"{prepared.outcome}{timing}")
    if as_json:
        emit_json(results)
    return ExitCode.OK if all(r["ready"] for r in results) else ExitCode.ENVIRONMENT


@pool.command()
@socket_option
@json_option
def status(socket_path: Path | None, as_json: bool) -> int:
    """Show the daemon's pool (VMs active and idle by key, queued leases, leases from pool vs cold, spawn
    times p50/p95, failures) and the template snapshots in the cache."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.pool import client  # noqa: PLC0415
    from lg.pool.wire import default_socket  # noqa: PLC0415

    config = load_project_config()
    path = socket_path or default_socket()
    remote = client.connect(config, path)
    try:
        daemon = remote.status() if remote is not None else None
    finally:
        if remote is not None:
            remote.close()
    templates = _templates(config.cache_dir / "snapshots")
    if as_json:
        emit_json({"socket": str(path), "daemon": daemon, "templates": templates})
        return ExitCode.OK
    if daemon is None:
        click.echo(f"no pool daemon answers on {path}: each `lg run` keeps a pool of its own (lg pool serve)")
    else:
        _print_daemon(daemon)
    click.echo(f"templates in {config.cache_dir / 'snapshots'}: {len(templates)}")
    for entry in templates:
        click.echo(f"  {entry['digest'][:12]}  image {str(entry['image_digest'])[:12]}  {entry['accelerator']}  "
                   f"{entry['bytes'] / 1e6:.0f} MB")
    return ExitCode.OK


def _templates(root: Path) -> list[dict[str, Any]]:
    from lg.pool.templates import TemplateStore  # noqa: PLC0415

    return TemplateStore.list_at(root)


def _print_daemon(status: dict[str, Any]) -> None:
    metrics = status["metrics"]
    settings = status["settings"]
    click.echo(f"pool daemon pid {status['daemon_pid']} on {status['socket']}: {status['active']} active, "
               f"{status['idle']} idle, {status['queued_leases']} queued "
               f"(max_active {settings['max_active']}, idle {settings['min_idle']}..{settings['max_idle']})")
    for key in status["keys"]:
        click.echo(f"  {key['key']}: idle {key['idle']}, starting {key['starting']}, expected {key['expected']}")
    leases = metrics["leases"]
    click.echo(f"leases: {metrics['leases_total']} ({leases.get('warm', 0)} warm, {leases.get('restored', 0)} "
               f"restored, {leases.get('cold', 0)} cold)")
    for kind, summary in metrics["spawn_seconds"].items():
        if summary["count"]:
            click.echo(f"spawn {kind}: {summary['count']}x, mean {summary['mean']}s, p50 {summary['p50']}s, "
                       f"p95 {summary['p95']}s")
    if metrics["failures"]:
        click.echo(f"failures: {metrics['failures']}")
    for why in metrics["recent_fallbacks"]:
        click.echo(f"  {why}")
