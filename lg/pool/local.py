"""A warm pool living in this process: what `lg run` uses when no pool daemon serves, and what the daemon's
client uses for the VMs the daemon does not make (those with network allow-lists)."""

from __future__ import annotations

from dataclasses import replace

from lg.model import ProjectConfig
from lg.pool.pool import WarmPool
from lg.vm.registry import hypervisor_for


def local_pool(config: ProjectConfig) -> WarmPool:
    """Templates live beside the images, in the cache: shared by every project on the host, keyed by content.
    With `pool.snapshots: false` nothing is made ahead and every lease cold-boots its VM."""
    if not config.pool.snapshots:
        return WarmPool(lambda name: hypervisor_for(config, name), replace(config.pool, min_idle=0, max_idle=0),
                        None)
    return WarmPool(lambda name: hypervisor_for(config, name), config.pool, config.cache_dir / "snapshots")
