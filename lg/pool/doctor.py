"""The pool's part of `lg doctor`: where `lg run` would get its VMs, and the template snapshots cached."""

from __future__ import annotations

from lg.errors import LgError
from lg.model import ProjectConfig
from lg.pool import client
from lg.pool.templates import TemplateStore
from lg.pool.wire import default_socket
from lg.vm.hostcheck import Check


def pool_check(config: ProjectConfig) -> Check:
    """The shared daemon if one answers, else a pool of each run's own; and how many templates are cached."""
    templates = TemplateStore.list_at(config.cache_dir / "snapshots")
    cached = f"{len(templates)} template snapshot(s) cached"
    if not config.pool.snapshots:
        return Check("pool", "ok", f"pool.snapshots is false: every step cold-boots; {cached}")
    remote = client.connect(config)
    if remote is None:
        return Check("pool", "ok", f"no daemon on {default_socket()}: each lg run keeps a pool of its own; {cached}")
    try:
        status = remote.status()
    except LgError as error:
        return Check("pool", "warn", f"the daemon on {default_socket()} does not answer: {error}",
                     "restart `lg pool serve`")
    finally:
        remote.close()
    return Check("pool", "ok", f"daemon pid {status['daemon_pid']} on {status['socket']}: {status['active']} active, "
                               f"{status['idle']} idle; {cached}")
