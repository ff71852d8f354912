"""Where `lg run` gets its VMs: the shared pool daemon when one is running, else a pool of its own."""

from __future__ import annotations

from typing import Protocol

from lg.model import ProjectConfig
from lg.pool import client
from lg.pool.key import PoolKey
from lg.pool.local import local_pool
from lg.pool.pool import Lease
from lg.vm.api import ExecRequest, SnapshotBackend, VmSpec


class VmProvider(Protocol):
    description: str

    def expect(self, key: PoolKey, spec: VmSpec, count: int, warmup: ExecRequest | None = None) -> None:
        """`count` more leases of `key` are coming (so VMs can be made ready ahead of them)."""
        ...

    def lease(self, key: PoolKey, spec: VmSpec, timeout: float | None = None,
              warmup: ExecRequest | None = None) -> Lease:
        """A fresh VM for one step, never handed out before; release it (or leave its `with`) to destroy it."""
        ...

    def snapshot_backend(self, name: str) -> SnapshotBackend | None:
        """The backend `name` when it can save VMs this process leased and restore them (an agent step's
        tool-call gate); None when it cannot (no snapshots, or the VMs live in another process)."""
        ...

    def close(self) -> None: ...


def open_provider(config: ProjectConfig) -> VmProvider:
    """The daemon's pool if `lg pool serve` answers on its socket, else a pool living in this process."""
    remote: VmProvider | None = client.connect(config) if config.pool.snapshots else None
    if remote is not None:
        return remote
    return local_pool(config)
