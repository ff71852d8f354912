"""The plan of a run (what `--dry-run` prints and a reviewer reads) and the checks made before booting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lg.config.durations import format_duration
from lg.config.pipeline import topological_order
from lg.errors import EnvironmentUnfit
from lg.inputs.run_inputs import RunInputs
from lg.model import ProjectConfig
from lg.render.plan import approval_view, step_grades
from lg.vm.registry import hypervisor_for


def build_plan(inputs: RunInputs, workspace: Path) -> dict[str, Any]:
    pipeline, config = inputs.pipeline, inputs.config
    grades = step_grades(pipeline, inputs.policy, inputs.profiles)
    steps = []
    for position, step in enumerate(topological_order(pipeline), start=1):
        steps.append({
            "position": position,
            "id": step.id,
            "name": step.display_name,
            "needs": list(step.needs),
            "if": step.condition,
            "image": step.image or pipeline.image,
            "profile": step.profile or pipeline.profile,
            "hypervisor": step.hypervisor or pipeline.hypervisor,
            "timeout": step.timeout,
            "retries": step.retries,
            "continue_on_error": step.continue_on_error,
            "approve": approval_view(step.approve),
            "risk": grades[step.id],
            "run": step.run,
        })
    return {
        "pipeline": pipeline.name,
        "file": str(pipeline.path),
        "workspace": str(workspace),
        "policy": pipeline.policy,
        "accelerator": config.accelerator,
        "state_dir": str(config.state_dir),
        "steps": steps,
    }


def render_plan(plan: dict[str, Any]) -> str:
    lines = [f"plan for {plan['pipeline']} (workspace {plan['workspace']}, policy {plan['policy']})"]
    for step in plan["steps"]:
        extras = [f"image {step['image']}", f"profile {step['profile']}"]
        if step["needs"]:
            extras.append("after " + ", ".join(step["needs"]))
        if step["timeout"]:
            extras.append(f"timeout {format_duration(step['timeout'])}")
        if step["retries"]:
            extras.append(f"retries {step['retries']}")
        if step["if"]:
            extras.append(f"if {step['if']}")
        risk = step["risk"]
        extras.append(f"risk {risk['level']}")
        if risk["denied"]:
            extras.append("DENIED by policy")
        elif step["approve"] or risk["gate"]:
            extras.append("GATE: needs approval")
        lines.append(f"{step['position']:>3}. {step['id']}: {step['name'] or ''}".rstrip(": "))
        lines.append(f"     {'; '.join(extras)}")
    return "\n".join(lines)


def preflight(inputs: RunInputs) -> None:
    """Everything that can be known to fail before a VM boots fails here, with a fix (exit 5). The images
    were required when the inputs were bound (lg.inputs)."""
    pipeline, config = inputs.pipeline, inputs.config
    for name in sorted({step.hypervisor or pipeline.hypervisor or config.hypervisor for step in pipeline.steps}):
        require_hypervisor(config, name)


def require_hypervisor(config: ProjectConfig, name: str) -> None:
    """Refuse a backend that cannot run VMs on this host, as its own probe says (a missing VMM binary, say).
    Its warnings (no KVM: TCG is slower) do not refuse: `lg doctor` shows them."""
    probe = hypervisor_for(config, name).probe()
    if probe.can_run:
        return
    fatal = [problem for problem in probe.problems if problem.fatal]
    why = "; ".join(problem.message for problem in fatal) or "its probe found no way to run VMs here"
    fix = next((problem.fix for problem in fatal if problem.fix), "run `lg doctor` for what is missing")
    raise EnvironmentUnfit(f"hypervisor {name!r} cannot run VMs on this host: {why}", fix=fix)
