"""The warm pool: ready VMs per key, each leased once and destroyed after its step, refilled in the background.

A VM enters the pool restored from its key's template snapshot (lg.pool.templates), or cold-booted when there
is no usable template (the reason is recorded). A lease takes an idle VM if one is ready, or makes one on the
spot; when `max_active` VMs are leased, further leases queue until one is released or their deadline passes.
How many idle VMs a key keeps is what the runs announced (`expect`: the steps still to come), at least
`min_idle` and at most `max_idle`: a pool never boots VMs nobody will use.

Isolation: a VM is handed out exactly once. Released VMs are destroyed, never returned; each restored VM has
its own run directory, disk overlay, clock, RNG state and identity (hostname, machine id) set at lease time.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from lg.errors import ExitCode, LgError
from lg.model import PoolSettings
from lg.pool.key import PoolKey
from lg.pool.metrics import PoolMetrics
from lg.pool.templates import TemplateProblem, TemplateStore
from lg.pool.warmup import exercise
from lg.vm.api import ExecRequest, Hypervisor, IdentityVm, ProcessVm, SnapshotBackend, Vm, VmError, VmSpec

RESTORE_FAILURES_BEFORE_COLD = 2  # consecutive failed restores after which a key cold-boots for good
REFILL_NICE = 10


def refill_workers() -> int:
    """VMs made at once in the background: making one is CPU-bound (a restore, then a warm-up that under TCG
    is mostly code translation), so one per core, at most two, leaves the running step its nice-0 share."""
    return max(1, min(2, os.cpu_count() or 1))


TEMPLATE_WAIT_NOTED = 1.0
"""Seconds spent waiting for another builder's template past which a lease says it waited for a build."""


class PoolExhausted(LgError):
    """No VM could be leased before the deadline: `max_active` VMs stayed leased the whole time."""

    exit_code = ExitCode.ENVIRONMENT


@dataclass
class ReadyVm:
    vm: Vm
    source: str  # restored | cold
    spawn_seconds: float
    note: str | None = None  # why it was cold-booted, when a restore was wanted
    template_seconds: float | None = None  # its key's template snapshot was built first, taking this long
    ready_at: float = field(default_factory=time.monotonic)  # when it was made


@dataclass
class Lease:
    """A VM for one step. Leaving the `with` block destroys it (in the background)."""

    vm: Vm
    key: PoolKey
    source: str  # warm (idle in the pool), restored or cold (made for this lease)
    wait_seconds: float  # from asking to having it
    spawn_seconds: float  # what making the VM cost (before or during the lease)
    note: str | None
    identity: dict[str, Any] = field(default_factory=dict)
    _release: Callable[[Lease], None] | None = None
    template_seconds: float | None = None  # the template was built for (or while waiting for) this VM
    made_while_waiting: bool = False  # "warm", but not ready when asked for: the lease waited for its making

    def release(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release(self)

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm.id, "source": self.source, "wait_seconds": round(self.wait_seconds, 4),
                "spawn_seconds": round(self.spawn_seconds, 3), "note": self.note,
                "template_seconds": round(self.template_seconds, 3) if self.template_seconds is not None else None,
                "made_while_waiting": self.made_while_waiting, **self.identity}

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


class WarmPool:
    description = "in-process pool"

    def __init__(self, backends: Callable[[str], Hypervisor], settings: PoolSettings, template_root: Path | None,
                 metrics: PoolMetrics | None = None) -> None:
        """`backends` makes the hypervisor of a key's backend; templates live under `template_root` (None: every
        VM is cold-booted)."""
        self._make_backend = backends
        self._backends: dict[str, tuple[Hypervisor, TemplateStore | None]] = {}
        self.settings = settings
        self.template_root = template_root
        self.metrics = metrics or PoolMetrics()
        self._cond = threading.Condition()
        self._idle: dict[PoolKey, deque[ReadyVm]] = {}
        self._specs: dict[PoolKey, VmSpec] = {}
        self._warmups: dict[PoolKey, ExecRequest | None] = {}
        self._expected: Counter[PoolKey] = Counter()
        self._starting: Counter[PoolKey] = Counter()
        self._restore_failures: Counter[PoolKey] = Counter()
        self._active = 0
        self._queued = 0
        self._destroying: list[threading.Thread] = []
        self._closed = False
        self._workers = [threading.Thread(target=self._refill_loop, name=f"lg-pool-refill-{n}", daemon=True)
                         for n in range(refill_workers())]
        for worker in self._workers:
            worker.start()

    # --- leasing ---

    def expect(self, key: PoolKey, spec: VmSpec, count: int, warmup: ExecRequest | None = None) -> None:
        """`count` more leases of `key` are coming: keep VMs ready for them (within min/max idle). `warmup`
        runs in the template before it is saved (a confined no-op that loads the key's security profile)."""
        with self._cond:
            self._specs[key] = _pool_spec(spec)
            if warmup is not None or key not in self._warmups:
                self._warmups[key] = warmup
            self._expected[key] = max(0, self._expected[key] + count)  # a negative count withdraws an announcement
            self._cond.notify_all()

    def lease(self, key: PoolKey, spec: VmSpec, timeout: float | None = None,
              warmup: ExecRequest | None = None) -> Lease:
        asked = time.monotonic()
        deadline = asked + (self.settings.lease_timeout if timeout is None else timeout)
        ready = self._take_or_reserve(key, spec, deadline, warmup)
        source = "warm" if ready is not None else ""
        if ready is None:
            try:
                ready = self._spawn(key, _pool_spec(spec), for_pool=False)  # this lease's own spec only
            except BaseException:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()
                raise
            source = ready.source
        lease = Lease(ready.vm, key, source, 0.0, ready.spawn_seconds, ready.note, _release=self._release,
                      template_seconds=ready.template_seconds, made_while_waiting=ready.ready_at > asked)
        _renice(ready.vm, 0)
        try:
            lease.identity = _fresh_identity(ready.vm, spec.hostname)
        except BaseException:
            lease.release()
            raise
        lease.wait_seconds = time.monotonic() - asked
        self.metrics.leased(source, lease.wait_seconds)
        return lease

    def _take_or_reserve(self, key: PoolKey, spec: VmSpec, deadline: float,
                         warmup: ExecRequest | None) -> ReadyVm | None:
        """An idle VM (counted active), or None with a slot reserved for one to be made."""
        with self._cond:
            self._specs.setdefault(key, _pool_spec(spec))
            self._warmups.setdefault(key, warmup)
            self._queued += 1
            try:
                ready = self._wait_for_slot(key, deadline)
            finally:
                self._queued -= 1
            self._active += 1
            if self._expected[key] > 0:
                self._expected[key] -= 1
            self._cond.notify_all()  # the refill worker: one fewer idle VM, or one fewer expected
            return ready

    def _wait_for_slot(self, key: PoolKey, deadline: float) -> ReadyVm | None:
        """Wait (lock held) until an idle VM of `key` can be taken, or one may be made here. A VM of the key
        that the refill is making already is waited for rather than made twice."""
        while True:
            if self._closed:
                raise PoolExhausted("the pool is shutting down")
            room = self._active < self.settings.max_active
            idle = self._idle.get(key)
            if room and idle:
                return idle.pop()  # the newest: the most recently warmed
            if room and not self._starting[key]:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.metrics.failed("lease_timeout")
                raise PoolExhausted(f"no VM free within the lease deadline: {self._active} of "
                                    f"{self.settings.max_active} allowed VMs leased, {self._starting[key]} "
                                    "being made (pool.max_active and lease_timeout in lg.yaml)")
            self._cond.wait(remaining)

    def _release(self, lease: Lease) -> None:
        def destroy() -> None:
            try:
                lease.vm.destroy()
            finally:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()

        thread = threading.Thread(target=destroy, name=f"lg-destroy-{lease.vm.id}", daemon=True)
        with self._cond:
            self._destroying = [t for t in self._destroying if t.is_alive()] + [thread]
        thread.start()

    # --- making VMs ---

    def backend(self, name: str) -> tuple[Hypervisor, TemplateStore | None]:
        with self._cond:
            if name not in self._backends:
                hypervisor = self._make_backend(name)
                store = None
                if self.template_root is not None and isinstance(hypervisor, SnapshotBackend):
                    store = TemplateStore(self.template_root, hypervisor)
                    store.reap()
                self._backends[name] = (hypervisor, store)
            return self._backends[name]

    def snapshot_backend(self, name: str) -> SnapshotBackend | None:
        """The backend of `name` when it can save a VM this process leased (an agent step's tool-call gate)."""
        hypervisor, _ = self.backend(name)
        return hypervisor if isinstance(hypervisor, SnapshotBackend) else None

    def _spawn(self, key: PoolKey, spec: VmSpec, for_pool: bool) -> ReadyVm:
        """A VM of `key`. One made `for_pool` (by a niced refill worker, whose nice its VMM and the VMM's session
        inherit: lg.vm.host.session_keeps_nice) waits idle; a restored one is warmed up while it waits, unless a
        lease is queued already: warming costs more CPU (about 0.7 s under TCG) than it saves the step (about
        0.4 s), so it pays only off the critical path."""
        ready = self._make(key, spec)
        if for_pool:
            with self._cond:
                wanted_now = self._queued > 0
            if ready.source == "restored" and not wanted_now:
                _warm_up(ready.vm, self._warmups.get(key))
        return ready

    def _make(self, key: PoolKey, spec: VmSpec) -> ReadyVm:
        hypervisor, templates = self.backend(key.backend)
        if templates is None:
            return self._cold(hypervisor, spec, "no template snapshots: every VM is cold-booted")
        if spec.network is not None:
            return self._cold(hypervisor, spec, "a VM with a network allow-list needs its own namespace at boot")
        if self._restore_failures[key] >= RESTORE_FAILURES_BEFORE_COLD:
            return self._cold(hypervisor, spec,
                              f"restores of this key failed {RESTORE_FAILURES_BEFORE_COLD} times in a row")
        asked = time.monotonic()
        try:
            template, built = templates.ensure(spec, self._warmups.get(key))
        except (TemplateProblem, VmError) as problem:
            self.metrics.failed("template", problem.message.splitlines()[0])
            return self._cold(hypervisor, spec, f"no template: {problem.message.splitlines()[0]}")
        started = time.monotonic()
        try:
            vm = templates.hypervisor.restore(template.path / "state", spec)  # the same backend, with snapshots
        except (VmError, OSError) as problem:
            self._restore_failures[key] += 1
            templates.discard(template.path)
            why = str(problem).splitlines()[0]
            self.metrics.failed("restore", why)
            return self._cold(hypervisor, spec,
                              f"restoring template {template.digest[:12]} failed ({why}); template removed")
        self._restore_failures[key] = 0
        seconds = time.monotonic() - started
        self.metrics.spawned("restore", seconds)
        # Built now (or waited for while another process built it): the first lease of a key pays for it.
        template_seconds = started - asked if built or started - asked > TEMPLATE_WAIT_NOTED else None
        return ReadyVm(vm, "restored", seconds, template_seconds=template_seconds)

    def _cold(self, hypervisor: Hypervisor, spec: VmSpec, why: str) -> ReadyVm:
        started = time.monotonic()
        try:
            vm = hypervisor.boot(spec)
        except VmError as problem:
            self.metrics.failed("boot", problem.message.splitlines()[0])
            raise
        seconds = time.monotonic() - started
        self.metrics.spawned("cold", seconds)
        self.metrics.fell_back(why)
        return ReadyVm(vm, "cold", seconds, why)

    def _refill_loop(self) -> None:
        # Refills run niced, and so do the VMs they start (a new thread's children inherit its nice value):
        # on a host with few cores, the step running now gets the CPU first; the lease renices its VM.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), REFILL_NICE)
        while True:
            with self._cond:
                key = self._next_to_fill()
                while key is None and not self._closed:
                    self._cond.wait()
                    key = self._next_to_fill()
                if self._closed or key is None:
                    return
                self._starting[key] += 1
                spec = self._specs[key]
            ready: ReadyVm | None = None
            try:
                ready = self._spawn(key, spec, for_pool=True)
            except Exception as problem:  # a failed refill must not kill the worker
                self.metrics.failed("refill", str(problem).splitlines()[0] if str(problem) else repr(problem))
                time.sleep(1.0)  # do not spin on a key that cannot be built
            with self._cond:
                self._starting[key] -= 1
                if ready is not None and not self._closed:
                    ready.ready_at = time.monotonic()  # idle from now: a lease asked before this waited for it
                    self._idle.setdefault(key, deque()).append(ready)
                    ready = None
                self._cond.notify_all()
            if ready is not None:
                ready.vm.destroy()

    def _next_to_fill(self) -> PoolKey | None:
        """The key furthest below its wanted idle count, if any (called with the lock held)."""
        room = self.settings.max_active - self._active - sum(len(q) for q in self._idle.values()) - sum(
            self._starting.values())
        if room <= 0:
            return None
        for key in self._specs:
            have = len(self._idle.get(key, ())) + self._starting[key]
            if have < self._wanted(key):
                return key
        return None

    def _wanted(self, key: PoolKey) -> int:
        return max(self.settings.min_idle, min(self._expected[key], self.settings.max_idle))

    def prepare(self, key: PoolKey, spec: VmSpec, warmup: ExecRequest | None = None) -> tuple[bool, float] | None:
        """Make sure `key` has its template snapshot, building it now if there is none (what the first lease
        of the key would otherwise wait for): (built now, seconds), or None when this pool keeps no templates
        (snapshots off, or a backend without them)."""
        _, templates = self.backend(key.backend)
        if templates is None:
            return None
        started = time.monotonic()
        _, built = templates.ensure(_pool_spec(spec), warmup)
        return built, time.monotonic() - started

    # --- status and shutdown ---

    def status(self) -> dict[str, Any]:
        with self._cond:
            keys = [{"key": key.label, **key.to_json(), "idle": len(self._idle.get(key, ())),
                     "starting": self._starting[key], "expected": self._expected[key], "wanted": self._wanted(key)}
                    for key in self._specs]
            return {"active": self._active, "idle": sum(len(q) for q in self._idle.values()),
                    "queued_leases": self._queued, "keys": keys,
                    "settings": {"min_idle": self.settings.min_idle, "max_idle": self.settings.max_idle,
                                 "max_active": self.settings.max_active,
                                 "lease_timeout": self.settings.lease_timeout},
                    "metrics": self.metrics.to_json()}

    def close(self) -> None:
        """Destroy every idle VM and wait for released ones to go. Leased VMs are their holders' to release."""
        with self._cond:
            self._closed = True
            idle = [ready for queue in self._idle.values() for ready in queue]
            self._idle.clear()
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout=120)
        for ready in idle:
            with contextlib.suppress(Exception):
                ready.vm.destroy()
        for thread in list(self._destroying):
            thread.join(timeout=60)

    def __enter__(self) -> WarmPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _pool_spec(spec: VmSpec) -> VmSpec:
    """The spec pooled VMs are made with: the step's hostname is set at lease time, not at boot."""
    return replace(spec, hostname="lg-pooled")


def _renice(vm: Vm, value: int) -> None:
    """Set the nice value of every thread of the VM's VMM (nice is per thread on Linux), and of its autogroup.
    Lowering it needs CAP_SYS_NICE: without it a leased VM stays niced, which costs speed, never isolation."""
    pid = vm.vmm_pid() if isinstance(vm, ProcessVm) else None
    if pid is None:
        return
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                os.setpriority(os.PRIO_PROCESS, int(task.name), value)
    _renice_autogroup(pid, value)


def _renice_autogroup(pid: int, value: int, proc: Path = Path("/proc")) -> None:
    """With sched_autogroup (Debian's default) the scheduler first shares the CPU between sessions, and a VMM
    is a session of its own: thread nice values alone then left a refilling VM an equal share with the step's
    VM (measured: steps of a 20-step pipeline took 0.5-0.9 s instead of 0.33 s while the pool refilled). The
    session's autogroup nice is what counts; it is changed only when the VMM's session is not lg's own, and
    never for the root autogroup (shared by every process whose session predates autogroups)."""
    theirs = _autogroup(proc / str(pid) / "autogroup")
    if theirs is None or theirs == _autogroup(proc / "self" / "autogroup"):
        return
    with contextlib.suppress(OSError):
        (proc / str(pid) / "autogroup").write_text(str(value))


def _autogroup(path: Path) -> str | None:
    """The autogroup named in /proc/PID/autogroup ("/autogroup-42 nice 0"), or None: the file is empty for a
    process in the root autogroup (seen in CI: lg started by an init that never called setsid), and absent
    without autogroup support or once the process is gone."""
    try:
        fields = path.read_text().split()
    except OSError:
        return None
    return fields[0] if fields else None


def _warm_up(vm: Vm, warmup: ExecRequest | None) -> None:
    """Run what a lease and a step do once, ahead of the lease (lg.pool.warmup). A VM that fails this is
    still handed out: its step then meets the same failure, and reports it."""
    with contextlib.suppress(VmError):
        exercise(vm, warmup)
        _fresh_identity(vm, "lg-pooled")


def _fresh_identity(vm: Vm, hostname: str) -> dict[str, Any]:
    """A new hostname and machine id, and the clock and RNG resynced, for the step about to use the VM."""
    if not isinstance(vm, IdentityVm):
        vm.resync()
        return {}
    cleaned = re.sub(r"[^A-Za-z0-9-]", "-", hostname).strip("-")[:63] or "lg-guest"
    return dict(vm.set_identity(cleaned, secrets.token_hex(16)))
