"""Stopping one running step from another thread: its VM is stopped, and the step's thread sees StepStopped.

Steps run in threads of their own (lg.runner.scheduler), and a thread cannot be interrupted from outside: what
stops a step is its VM. Each step leases through a StoppableVms bound to its StopSwitch; `stop()` stops the
VM it holds (the VMM process is killed; a VM without one is destroyed), so the guest call the step's thread is
blocked in fails at once; leaving the lease then raises StepStopped in that thread instead of the failure, and
a lease asked for after the stop is refused with it. StepStopped is a KeyboardInterrupt, so the step's body
treats it as it treats Ctrl-C (lg.runner.engine._execute): output flushed, nothing of the attempt applied.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import replace

from lg.pool.key import PoolKey
from lg.pool.pool import Lease
from lg.pool.provider import VmProvider
from lg.vm.api import ExecRequest, ProcessVm, SnapshotBackend, Vm, VmSpec


class StepStopped(KeyboardInterrupt):
    """The step was stopped from outside while it ran: `cancelled` by fail_fast, else interrupted with its run."""

    def __init__(self, reason: str, *, cancelled: bool) -> None:
        super().__init__(reason)
        self.reason, self.cancelled = reason, cancelled


class StopSwitch:
    """One step's: stopped at most once, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vm: Vm | None = None
        self.stopped: StepStopped | None = None

    def stop(self, reason: str, *, cancelled: bool) -> None:
        with self._lock:
            if self.stopped is not None:
                return
            self.stopped = StepStopped(reason, cancelled=cancelled)
            vm = self._vm
        if vm is not None:
            _stop_vm(vm)

    def check(self) -> None:
        if self.stopped is not None:
            raise self.stopped

    def holding(self, vm: Vm | None) -> None:
        """The step holds `vm` now (None: none any more)."""
        with self._lock:
            self._vm = vm
            stopped = self.stopped is not None
        if stopped and vm is not None:
            _stop_vm(vm)


def _stop_vm(vm: Vm) -> None:
    pid = vm.vmm_pid() if isinstance(vm, ProcessVm) else None
    if pid is None:
        vm.destroy()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)  # the step's thread sees its VM die and destroys it as usual


class StoppableVms:
    """The run's VmProvider, as one step leases from it."""

    def __init__(self, vms: VmProvider, switch: StopSwitch) -> None:
        self._vms, self._switch = vms, switch
        self.description = vms.description

    def expect(self, key: PoolKey, spec: VmSpec, count: int, warmup: ExecRequest | None = None) -> None:
        self._vms.expect(key, spec, count, warmup)

    def lease(self, key: PoolKey, spec: VmSpec, timeout: float | None = None,
              warmup: ExecRequest | None = None) -> Lease:
        self._switch.check()
        lease = self._vms.lease(key, spec, timeout, warmup)
        switch, release = self._switch, lease.release

        def released(_: Lease) -> None:
            switch.holding(None)
            release()
            switch.check()  # whatever the stopped VM made the step see, it was stopped: say so

        switch.holding(lease.vm)
        return replace(lease, _release=released)

    def snapshot_backend(self, name: str) -> SnapshotBackend | None:
        return self._vms.snapshot_backend(name)

    def restored(self, vm: Vm | None) -> None:
        """The step holds `vm`, a VM it restored itself (an agent step after its tool-call gate), stopped like a
        leased one; None: it holds it no more (about to destroy it)."""
        self._switch.holding(vm)
        if vm is not None:
            self._switch.check()

    def close(self) -> None:
        """The run's provider is the run's to close."""
