"""One attempt of one step, in a VM booted for it alone: copy in, run, and (on success) collect its outputs,
artifacts and workspace changes out of the VM before it is destroyed.

Nothing here touches the host workspace: the changed files are fetched into the run's effects directory, and
the engine decides whether they are applied now or held for approval (lg.runner.effects).
This is the only module of the runner that talks to a VM, through the backend-neutral `lg.vm.api`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from lg.errors import LgError
from lg.inputs.run_inputs import RunInputs
from lg.model import FileChange, Step
from lg.pool.key import PoolKey, key_for, profile_digest
from lg.pool.pool import Lease
from lg.pool.provider import VmProvider
from lg.runner import artifacts
from lg.runner.console import StepOutput
from lg.runner.effects import discard, files_to_fetch
from lg.runner.lease_wait import TemplateWaitNotice
from lg.runner.step_cache import CacheEntry, StepCache, cache_root, resolve_key, under_paths
from lg.runner.workspace import UnsafeChange, check_change_path, exclude_function, load_ignore_rules
from lg.runs.states import StepStatus
from lg.security.enforce import HostPlan, plan_for
from lg.security.profile import VmProfile
from lg.security.state import security_state
from lg.vm.api import ExecRequest, ExecResult, NetworkSpec, Vm, VmSpec
from lg.vm.registry import resolve

GUEST_WORKSPACE = "/workspace"
GUEST_OUTPUT_DIR = "/run/lg"
GUEST_OUTPUT_FILE = "output"  # $LG_OUTPUT, outside the workspace so it is never a workspace change
MAX_OUTPUT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class StepContext:
    inputs: RunInputs
    step: Step
    workspace: Path
    script: str
    env: Mapping[str, str]
    timeout: float
    run_id: str
    run_dir: Path
    output: StepOutput
    profile: VmProfile
    effects_dir: Path  # where the changed files are fetched to (emptied first)
    vms: VmProvider  # the warm pool (the run's own, or the shared daemon's)


@dataclass(frozen=True)
class AttemptResult:
    status: StepStatus  # succeeded, failed or timed_out
    exit_code: int | None
    detail: str | None
    accelerator: str | None = None
    image_digest: str | None = None
    boot_seconds: float | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    changes: tuple[FileChange, ...] = ()
    security: Mapping[str, Any] | None = None  # what confined the step, as the guest kernel showed it
    vm: Mapping[str, Any] | None = None  # where the VM came from (warm pool, restored, cold) and what it cost


def run_attempt(context: StepContext) -> AttemptResult:
    step = context.step
    host_plan = plan_for(context.profile)  # refuses (exit 5) what cannot be enforced here, before any VM starts
    if host_plan.network_note:
        context.output.note(f"network: {host_plan.network_note}")
    key, spec = vm_request(context.inputs, step, context.profile, host_plan.network)
    image = spec.image
    try:
        # The lease resyncs the guest's clock (microvm has no RTC) and RNG, and gives it the step's identity.
        with TemplateWaitNotice(context.inputs.config.cache_dir / "snapshots", context.output.note):
            lease = context.vms.lease(key, spec, warmup=warmup_for(context.profile))
        with lease:
            vm = lease.vm
            context.output.note(lease_note(lease))
            result = _in_vm(context, vm, image.digest, host_plan)
            return replace(result, boot_seconds=lease.spawn_seconds, vm=lease.to_json())
    except UnsafeChange as error:
        return AttemptResult(StepStatus.FAILED, None, str(error), image_digest=image.digest)
    except OSError as error:
        # The host side failed (typically a full disk while fetching the step's changes): nothing reached the
        # workspace, and the partial fetch is removed.
        discard(context.effects_dir)
        return AttemptResult(StepStatus.FAILED, None, f"cannot copy the step's changes to the host: "
                             f"{error.strerror or error}; nothing was applied", image_digest=image.digest)
    except LgError as error:
        # A guest that crashed, an agent that went silent, a boot that failed: the step failed, and says why.
        return AttemptResult(StepStatus.FAILED, None, str(error), image_digest=image.digest)


def vm_request(inputs: RunInputs, step: Step, profile: VmProfile,
               network: NetworkSpec | None = None) -> tuple[PoolKey, VmSpec]:
    """The VM a step needs, and the pool key of VMs interchangeable with it."""
    config, pipeline = inputs.config, inputs.pipeline
    spec = VmSpec(
        image=inputs.image_for(step),
        vcpus=profile.machine.vcpus,
        memory_mib=profile.machine.memory_mib,
        accelerator=config.accelerator,
        hostname=f"lg-{step.id}"[:63],
        network=network,
    )
    # `auto` becomes the backend it stands for here: pool keys and templates are per backend.
    backend = resolve(config, step.hypervisor or pipeline.hypervisor or config.hypervisor)
    kernel = inputs.image_for(step).kernel_release or None
    return key_for(backend, spec, profile_digest(profile.confinement(kernel))), spec


def image_kernel(context: StepContext) -> str | None:
    """The kernel release of the step's image (the seccomp filter's minKernel rules are decided for it)."""
    return context.inputs.image_for(context.step).kernel_release or None


def warmup_for(profile: VmProfile) -> ExecRequest:
    """A no-op under the profile's confinement, run in a pool's template before it is saved: restored VMs
    then start with the profile's AppArmor policy loaded (about a second of apparmor_parser under TCG)."""
    uid, gid = profile.uid_gid
    return ExecRequest(argv=("/bin/true",), uid=uid, gid=gid, timeout=120, confine=profile.confinement())


WAIT_NOTED_SECONDS = 0.5
"""A warm VM the lease waited less than this for is as good as ready: said as "from the warm pool"."""


def lease_note(lease: Lease) -> str:
    vm = lease.vm
    if lease.template_seconds is not None:
        # The first VM of this image and profile: its template snapshot was built first (once; later VMs of
        # the key are restored from it). Calling that "from the warm pool" hid where the time went.
        how = (f"built its pool template first ({lease.template_seconds:.1f}s, once for this image and profile), "
               f"then restored in {lease.spawn_seconds:.2f}s; ready after {lease.wait_seconds:.1f}s")
    elif lease.source == "warm" and lease.made_while_waiting and lease.wait_seconds >= WAIT_NOTED_SECONDS:
        how = f"made for this step while it waited {lease.wait_seconds:.1f}s (in {lease.spawn_seconds:.2f}s)"
    elif lease.source == "warm":
        how = (f"from the warm pool in {lease.wait_seconds * 1000:.1f} ms "
               f"(made ready earlier in {lease.spawn_seconds:.2f}s)")
    elif lease.source == "restored":
        how = f"restored from its template snapshot in {lease.spawn_seconds:.2f}s"
    else:
        how = f"cold-booted in {lease.spawn_seconds:.1f}s" + (f" ({lease.note})" if lease.note else "")
    return f"VM {vm.id} {how} ({vm.accelerator})"


def _in_vm(context: StepContext, vm: Vm, image_digest: str, host_plan: HostPlan) -> AttemptResult:
    step = context.step
    exclude = exclude_function(context.workspace, load_ignore_rules(context.workspace))
    uid, gid = context.profile.uid_gid
    # The cache goes in first: the workspace put after it records what the step's changes are compared with.
    cache = _restore_cache(context, vm, image_digest, exclude)
    put = artifacts.workspace_files(context.workspace, exclude) if step.artifacts else set()
    vm.put_tree(context.workspace, GUEST_WORKSPACE, exclude, owner=(uid, gid))
    artifacts.deliver(vm, step, context.run_dir, (uid, gid), context.output.note)
    workdir = str(PurePosixPath(GUEST_WORKSPACE) / step.workdir) if step.workdir else GUEST_WORKSPACE
    env = {
        **context.env,
        "LG_OUTPUT": f"{GUEST_OUTPUT_DIR}/{GUEST_OUTPUT_FILE}",
        "LG_RUN_ID": context.run_id,
        "LG_STEP_ID": step.id,
        "LG_WORKSPACE": GUEST_WORKSPACE,
        "CI": "true",
    }
    env = {"HOME": GUEST_WORKSPACE if uid else "/root", "USER": context.profile.user, **env}
    result = vm.exec(
        ExecRequest(argv=("/bin/sh", "-e", "-c", context.script), env=env, cwd=workdir, timeout=context.timeout,
                    uid=uid, gid=gid, confine=context.profile.confinement(image_kernel(context)),
                    mkdirs=(workdir, GUEST_OUTPUT_DIR)),  # the workspace was put owned by the step's user
        on_output=context.output,
    )
    base = AttemptResult(StepStatus.FAILED, result.exit_code, None, accelerator=vm.accelerator,
                         image_digest=image_digest, boot_seconds=vm.boot_seconds,
                         security=security_state(context.profile, result.confinement, vm.host_confinement,
                                                 network=vm.network_state or host_plan.network_note,
                                                 selinux=host_plan.selinux))
    if result.timed_out:
        return replace(base, status=StepStatus.TIMED_OUT, detail=f"timed out after {context.timeout:.0f}s; VM killed")
    if result.exit_code != 0:
        return replace(base, detail=_failure(result, context.profile))
    outputs = collect_outputs(vm, step)
    everything = tuple(vm.changes(GUEST_WORKSPACE))
    # What the step did inside its cache paths is the cache's: never an effect on the host workspace.
    changes = tuple(c for c in everything if cache is None or not under_paths(c.path, cache.paths))
    for change in changes:
        check_change_path(context.workspace, change)  # refuse before fetching anything
    fetch_effects(vm, changes, context.effects_dir)
    artifacts.collect(vm, step, GUEST_WORKSPACE, artifacts.guest_paths(put, everything),
                      context.run_dir, context.output.note)
    if cache is not None and cache.entry is None:
        _save_cache(context, vm, cache)
    return replace(base, status=StepStatus.SUCCEEDED, outputs=outputs, changes=changes)


@dataclass(frozen=True)
class _CacheUse:
    store: StepCache
    key: str
    scope: str
    paths: tuple[str, ...]
    entry: CacheEntry | None  # None: a miss, saved if the step succeeds


def _restore_cache(context: StepContext, vm: Vm, image_digest: str,
                   exclude: Callable[[str], bool]) -> _CacheUse | None:
    spec = context.step.cache
    if spec is None:
        return None
    config = context.inputs.config
    store = StepCache(cache_root(config.state_dir), config.step_cache)
    key = resolve_key(spec.key, context.workspace, exclude)
    scope = f"{profile_digest(context.profile.confinement(image_kernel(context)))}:{image_digest}"
    entry = store.lookup(key, scope)
    if entry is None:
        context.output.note(f"cache {key}: miss; saved if the step succeeds")
        return _CacheUse(store, key, scope, spec.paths, None)
    with tempfile.TemporaryDirectory(prefix="lg-cache-") as scratch:
        store.extract(entry, Path(scratch))
        stats = vm.put_tree(Path(scratch), GUEST_WORKSPACE, owner=context.profile.uid_gid)
    context.output.note(f"cache {key}: restored {stats.files} file(s), {entry.size / 1048576:.1f} MiB")
    return _CacheUse(store, key, scope, spec.paths, entry)


def _save_cache(context: StepContext, vm: Vm, cache: _CacheUse) -> None:
    """Save the step's cache paths; a cache that cannot be saved is said, and the step still succeeds."""
    with tempfile.TemporaryDirectory(prefix="lg-cache-") as scratch:
        present = []
        for path in cache.paths:
            try:
                vm.get_paths(GUEST_WORKSPACE, [path], Path(scratch))
                present.append(path)
            except LgError as missing:
                context.output.note(f"cache {cache.key}: {path} not saved ({missing})")
        if not present:
            return
        try:
            saved = cache.store.save(cache.key, cache.scope, Path(scratch), tuple(present))
        except (OSError, LgError) as error:
            context.output.note(f"cache {cache.key}: not saved ({error})")
            return
    if isinstance(saved, str):
        context.output.note(f"cache {cache.key}: {saved}")
    else:
        context.output.note(f"cache {cache.key}: saved {', '.join(present)} ({saved.size / 1048576:.1f} MiB)")


def _failure(result: ExecResult, profile: VmProfile) -> str:
    hit = (result.confinement or {}).get("limits_hit", {})
    limits = profile.effective_limits
    because = []
    if hit.get("oom_kills"):
        because.append(f"the memory limit ({limits.memory_mib} MiB) was hit: out-of-memory kill in the guest")
    if hit.get("forks_refused"):
        because.append(f"the pids limit ({limits.pids}) refused {hit['forks_refused']} fork(s)")
    what = f"killed by signal {result.signal}" if result.signal else f"exited with {result.exit_code}"
    return f"{what}; {'; '.join(because)}" if because else what


def _fetch_text(vm: Vm, guest_dir: str, relative: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="lg-fetch-") as scratch:
        try:
            vm.get_paths(guest_dir, [relative], Path(scratch))
        except LgError:
            return None
        path = Path(scratch, *PurePosixPath(relative).parts)
        if not path.is_file() or path.stat().st_size > MAX_OUTPUT_BYTES:
            return None
        return path.read_text(errors="replace")


def collect_outputs(vm: Vm, step: Step) -> dict[str, str]:
    if not step.outputs:
        return {}
    lines = _fetch_text(vm, GUEST_OUTPUT_DIR, GUEST_OUTPUT_FILE) or ""
    written = dict(line.split("=", 1) for line in lines.splitlines() if "=" in line)
    outputs: dict[str, str] = {}
    for spec in step.outputs:
        if spec.file:
            value = _fetch_text(vm, GUEST_WORKSPACE, spec.file)
            if value is not None:
                outputs[spec.name] = value.rstrip("\n")
        elif spec.name in written:
            outputs[spec.name] = written[spec.name].strip()
    return outputs


def fetch_effects(vm: Vm, changes: tuple[FileChange, ...], destination: Path) -> None:
    discard(destination)  # a previous attempt's files must not mix with this one's
    destination.mkdir(parents=True)
    wanted = files_to_fetch(changes)
    if wanted:
        vm.get_paths(GUEST_WORKSPACE, wanted, destination)
