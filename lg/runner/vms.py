"""Where one run gets its VMs, and how none of them stays alive while the run waits for a human.

A run announces the VMs its steps will lease (`expect`) so that the pool makes them ready ahead. A run that then
waits at a gate with `--wait` kept those warm VMs, and the pool's refill kept making them: a QEMU stayed alive
through a pause that may last hours, although docs/approvals.md says none does (issue #20 item 7). Before such a
wait the engine calls `park()`: the run's own pool is closed (its idle VMs destroyed, its refill stopped) and
opened again when the run goes on, with the announcements still outstanding; a shared pool (the daemon's, or
one a caller passed in) is not the run's to close, so the run withdraws its announcements from it instead.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from lg.pool.key import PoolKey
from lg.pool.pool import Lease
from lg.pool.provider import VmProvider
from lg.vm.api import ExecRequest, SnapshotBackend, VmSpec


class RunVms:
    """A VmProvider for one run, over the provider it leases from."""

    def __init__(self, opener: Callable[[], VmProvider] | None, shared: VmProvider | None = None) -> None:
        """`opener` makes the run's own provider (closed when parked and at the end); or `shared` is used as is."""
        self._opener, self._current = opener, shared
        self._lock = threading.Lock()  # steps lease from threads of their own (lg.runner.scheduler)
        self.description = shared.description if shared is not None else "the run's VMs"
        self._parked = False
        self._announced: Counter[PoolKey] = Counter()  # announced and not yet leased
        self._shapes: dict[PoolKey, tuple[VmSpec, ExecRequest | None]] = {}

    def expect(self, key: PoolKey, spec: VmSpec, count: int, warmup: ExecRequest | None = None) -> None:
        with self._lock:
            provider = self._provider()
            self._announced[key] += count
            self._shapes[key] = (spec, warmup)
            provider.expect(key, spec, count, warmup)

    def lease(self, key: PoolKey, spec: VmSpec, timeout: float | None = None,
              warmup: ExecRequest | None = None) -> Lease:
        with self._lock:
            provider = self._provider()
            if self._announced[key] > 0:
                self._announced[key] -= 1
        return provider.lease(key, spec, timeout, warmup)  # outside the lock: it may wait for a free VM

    def snapshot_backend(self, name: str) -> SnapshotBackend | None:
        with self._lock:
            provider = self._provider()
        return provider.snapshot_backend(name)

    def park(self) -> None:
        """Leave no VM alive on the run's account while it waits (a run holds no lease when it waits at a gate)."""
        with self._lock:
            if self._current is None or self._parked:
                return
            if self._opener is not None:
                self._current.close()  # idle VMs destroyed, refill stopped
                self._current = None
                return
            self._announce(-1)  # a shared pool: withdraw what the run announced
            self._parked = True

    def close(self) -> None:
        with self._lock:
            if self._opener is not None and self._current is not None:
                self._current.close()
                self._current = None

    def _provider(self) -> VmProvider:
        if self._current is None:
            assert self._opener is not None  # noqa: S101 - a shared provider is never dropped
            self._current = self._opener()
            self._announce(+1)
        elif self._parked:
            self._parked = False
            self._announce(+1)
        return self._current

    def _announce(self, sign: int) -> None:
        """Announce again (+1) or withdraw (-1) the leases announced and still to come."""
        assert self._current is not None  # noqa: S101
        for key, count in self._announced.items():
            if count > 0:
                spec, warmup = self._shapes[key]
                self._current.expect(key, spec, sign * count, warmup)
