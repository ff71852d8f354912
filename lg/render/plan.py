"""Plain-data views of the model, for `lg render`, `--json` and the dry-run plan."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from lg.config.step_data import HASH_FILES_MARKER
from lg.model import ApprovalSpec, Pipeline, Step
from lg.policy.grade import grade_step
from lg.policy.model import RiskPolicy
from lg.security.profile import VmProfile


def step_grades(pipeline: Pipeline, policy: RiskPolicy, profiles: Mapping[str, VmProfile]) -> dict[str, dict[str, Any]]:
    """Each step's pre-run grade, as a reviewer sees it in a pull request (output templates unrendered):
    its script, and how its VM profile (`profiles`, by the names steps use) relaxes the default one."""
    grades = {}
    for step in pipeline.steps:
        profile = profiles[step.profile or pipeline.profile]
        grades[step.id] = grade_step(policy, step, profile.relaxations()).to_json()
    return grades


def pipeline_view(pipeline: Pipeline, grades: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The fully expanded pipeline. Secret *names* only: values are never read here."""
    return {
        "name": pipeline.name,
        "description": pipeline.description,
        "file": str(pipeline.path),
        "hypervisor": pipeline.hypervisor,
        "image": pipeline.image,
        "profile": pipeline.profile,
        "policy": pipeline.policy,
        "max_parallel": pipeline.max_parallel,  # None: lg.yaml's, else from the pool and the cores
        "fail_fast": pipeline.fail_fast,
        **({"inputs": inputs_view(pipeline)} if pipeline.inputs else {}),
        "vars": dict(pipeline.vars),
        "env": dict(pipeline.env),
        "secrets": [secret.name for secret in pipeline.secrets],
        "timeout": pipeline.timeout,
        "steps": [{**step_view(step), **({"risk": grades[step.id]} if grades else {})} for step in pipeline.steps],
    }


def inputs_view(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Each declared input with the value this render (or run) is bound with."""
    view = {}
    for spec in pipeline.inputs:
        entry: dict[str, Any] = {"type": spec.type, "value": pipeline.input_values.get(spec.name)}
        entry["default" if not spec.required else "required"] = spec.default if not spec.required else True
        if spec.options:
            entry["options"] = list(spec.options)
        if spec.description:
            entry["description"] = spec.description
        view[spec.name] = entry
    return view


def step_view(step: Step) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": step.id,
        "name": step.display_name,
        "run": step.run,
        "uses": step.uses,
        "needs": list(step.needs),
        "if": step.condition,
        "env": dict(step.env),
        "workdir": step.workdir,
        "timeout": step.timeout,
        "retries": step.retries,
        "continue_on_error": step.continue_on_error,
        "outputs": [{"name": o.name, "file": o.file} if o.file else o.name for o in step.outputs],
        "artifacts": list(step.artifacts),
        "artifacts_from": dict(step.artifacts_from),
        "cache": {"key": cache_key_view(step.cache.key), "paths": list(step.cache.paths)} if step.cache else None,
        "matrix": dict(step.matrix),
        "matrix_limits": {key: value for key, value in (
            ("max_parallel", step.matrix_group.max_parallel), ("fail_fast", step.matrix_group.fail_fast))
            if value is not None} if step.matrix_group is not None else None,
        "profile": step.profile,
        "hypervisor": step.hypervisor,
        "image": step.image,
        "approve": approval_view(step.approve),
    }
    # Keep the rendering short: drop what is unset, but keep what a reviewer always wants to see.
    always = {"id", "name", "run", "needs"}
    return {key: value for key, value in view.items() if key in always or value not in (None, [], {}, False, 0)}


def cache_key_view(key: str) -> str:
    """A loaded cache key as a reader wrote it: hashFiles() calls are computed when the step runs."""
    return HASH_FILES_MARKER.sub(
        lambda found: "hashFiles(" + ", ".join(repr(p) for p in json.loads(found.group(1))) + ")", key)


def approval_view(approval: ApprovalSpec | None) -> dict[str, Any] | None:
    if approval is None:
        return None
    return {
        "approvers": list(approval.approvers),
        "count": approval.count,
        "timeout": approval.timeout,
        "on_timeout": approval.on_timeout,
        "reason": approval.reason,
    }
