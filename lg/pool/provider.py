"""Where `lg run` gets its VMs: the shared pool daemon when one is running, else a pool of its own."""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from lg.model import ProjectConfig
from lg.pool.key import PoolKey
from lg.pool.pool import Lease, WarmPool
from lg.vm.api import ExecRequest, VmSpec, hypervisor_for


class VmProvider(Protocol):
    description: str

    def expect(self, key: PoolKey, spec: VmSpec, count: int, warmup: ExecRequest | None = None) -> None:
        """`count` more leases of `key` are coming (so VMs can be made ready ahead of them)."""
        ...

    def lease(self, key: PoolKey, spec: VmSpec, timeout: float | None = None,
              warmup: ExecRequest | None = None) -> Lease:
        """A fresh VM for one step, never handed out before; release it (or leave its `with`) to destroy it."""
        ...

    def close(self) -> None: ...


def local_pool(config: ProjectConfig) -> WarmPool:
    """Templates live beside the images, in the cache: shared by every project on the host, keyed by content.
    With `pool.snapshots: false` nothing is made ahead and every lease cold-boots its VM."""
    if not config.pool.snapshots:
        return WarmPool(lambda name: hypervisor_for(config, name), replace(config.pool, min_idle=0, max_idle=0),
                        None)
    return WarmPool(lambda name: hypervisor_for(config, name), config.pool, config.cache_dir / "snapshots")


def open_provider(config: ProjectConfig) -> VmProvider:
    """The daemon's pool if `lg pool serve` answers on its socket, else a pool living in this process."""
    from lg.pool import client  # noqa: PLC0415

    remote: VmProvider | None = client.connect(config) if config.pool.snapshots else None
    if remote is not None:
        return remote
    return local_pool(config)
