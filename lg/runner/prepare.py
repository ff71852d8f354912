"""`lg pool prepare PIPELINE`: build, ahead of any run, the pool template snapshots a pipeline's steps restore
their VMs from. Without it the first run on a machine pays for each one inside its first step (about 25 s
under TCG for the README's demo); scripts/setup runs it for the shipped example pipelines."""

from __future__ import annotations

from dataclasses import dataclass

from lg.errors import LgError
from lg.inputs.run_inputs import RunInputs
from lg.pool.key import PoolKey
from lg.pool.local import local_pool
from lg.pool.templates import TemplateProblem
from lg.runner.step_vm import vm_request, warmup_for
from lg.vm.api import ExecRequest, VmError, VmSpec


@dataclass(frozen=True)
class Prepared:
    label: str  # the pool key, as `lg pool status` shows it
    steps: tuple[str, ...]
    outcome: str  # built | present | not pooled (why) | cannot build (why)
    seconds: float = 0.0
    ready: bool = True  # False: the template could not be built (its steps will cold-boot)


def prepare_templates(inputs: RunInputs) -> list[Prepared]:
    """Each distinct VM shape of the pipeline's steps, with its template made sure of (in the cache, shared
    with the pool daemon and every run on the host)."""
    shapes: dict[str, tuple[PoolKey, VmSpec, ExecRequest, list[str]]] = {}
    skipped: list[Prepared] = []
    for step in inputs.pipeline.steps:
        profile = inputs.profile_for(step)
        if profile.network is not None:
            skipped.append(Prepared(step.id, (step.id,), "not pooled (a network allow-list: cold-booted)"))
            continue
        key, spec = vm_request(inputs, step, profile)
        entry = shapes.setdefault(key.label, (key, spec, warmup_for(profile), []))
        entry[3].append(step.id)
    results = []
    pool = local_pool(inputs.config)
    try:
        for label, (key, spec, warmup, steps) in shapes.items():
            try:
                done = pool.prepare(key, spec, warmup)
            except (TemplateProblem, VmError, LgError) as problem:
                results.append(Prepared(label, tuple(steps), f"cannot build: {problem}", ready=False))
                continue
            if done is None:
                results.append(Prepared(label, tuple(steps), "not pooled (snapshots are off, or the backend "
                                                              "has none)"))
            else:
                results.append(Prepared(label, tuple(steps), "built" if done[0] else "present", done[1]))
    finally:
        pool.close()
    return results + skipped
