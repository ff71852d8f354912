"""`lg validate`: tell what kind of file each path is, validate it fully, and collect every error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lg.config.yamlsource import SourceDoc, load_yaml
from lg.errors import InvalidInput, InvalidInputs


@dataclass(frozen=True)
class FileReport:
    path: Path
    kind: str  # pipeline | risk-policy | lg | image-recipe | unknown
    summary: str  # one line for a valid file, e.g. "12 steps"
    errors: tuple[InvalidInput, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def detect_kind(path: Path, doc: SourceDoc) -> str:
    """Kinds are told apart by their distinctive top-level keys; anything else is checked as a pipeline."""
    if path.name in ("lg.yaml", "lg.yml"):
        return "lg"
    data = doc.data if isinstance(doc.data, dict) else {}
    if "defaultAction" in data:
        return "seccomp"
    if "rules" in data or "thresholds" in data or "required_gates" in data or "approvals" in data:
        return "risk-policy"
    if "kernel" in data and "steps" not in data:
        return "image-recipe"
    if "steps" not in data and any(key in data for key in VM_PROFILE_KEYS):
        return "vm-profile"
    return "pipeline"


VM_PROFILE_KEYS = ("machine", "user", "capabilities", "no_new_privileges", "cgroups", "network", "seccomp",
                   "apparmor", "selinux", "read_only_paths", "tmpfs", "optional")


def validate_file(path: Path) -> FileReport:
    try:
        doc = load_yaml(path)
    except InvalidInput as error:
        return FileReport(path, "unknown", "", (error,))
    kind = detect_kind(path, doc)
    try:
        summary = _VALIDATORS[kind](path)
    except InvalidInputs as errors:
        return FileReport(path, kind, "", tuple(errors.errors))
    except InvalidInput as error:
        return FileReport(path, kind, "", (error,))
    return FileReport(path, kind, summary, ())


def _validate_pipeline(path: Path) -> str:
    from lg.inputs.run_inputs import load_run_inputs  # noqa: PLC0415 - keeps kind detection import-light

    pipeline = load_run_inputs(path).pipeline
    gates = sum(1 for step in pipeline.steps if step.approve is not None)
    return f"{len(pipeline.steps)} steps, {gates} explicit gate(s)"


def _validate_policy(path: Path) -> str:
    from lg.policy.load import load_policy_file  # noqa: PLC0415

    policy = load_policy_file(path)
    return f"{len(policy.rules)} rules"


def _validate_project(path: Path) -> str:
    from lg.config.project import load_project_file  # noqa: PLC0415

    config = load_project_file(path)
    return f"hypervisor {config.hypervisor}, image {config.image}"


def _validate_recipe(path: Path) -> str:
    from lg.images.recipe import load_recipe  # noqa: PLC0415

    recipe = load_recipe(path)
    return f"image recipe {recipe.name!r}"


def _validate_vm_profile(path: Path) -> str:
    from lg.security.profile import load_vm_profile_file  # noqa: PLC0415

    profile = load_vm_profile_file(path)
    return f"{profile.machine.vcpus} vCPU, {profile.machine.memory_mib} MiB"


def _validate_seccomp(path: Path) -> str:
    from lg.security.seccomp import load_seccomp  # noqa: PLC0415

    profile = load_seccomp(path)
    return f"{len(profile.compiled['rules'])} rules, sha256 {profile.digest[:12]}"


_VALIDATORS: dict[str, Callable[[Path], str]] = {
    "seccomp": _validate_seccomp,
    "pipeline": _validate_pipeline,
    "risk-policy": _validate_policy,
    "lg": _validate_project,
    "image-recipe": _validate_recipe,
    "vm-profile": _validate_vm_profile,
}
