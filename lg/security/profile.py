"""VM profiles (profiles/vm/*.yaml): the machine shape a step runs on, and (issue 7) its confinement.

This version reads the machine shape. Confinement keys (capabilities, seccomp, AppArmor, cgroups, network)
are not accepted yet: a profile that asks for them is refused rather than silently not enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.config.project import resolve_named_file
from lg.config.schema_check import check_schema
from lg.config.yamlsource import load_yaml
from lg.errors import InvalidInputs
from lg.model import ProjectConfig


@dataclass(frozen=True)
class MachineShape:
    vcpus: int = 1
    memory_mib: int = 512


@dataclass(frozen=True)
class VmProfile:
    name: str
    path: Path
    description: str
    machine: MachineShape


def vm_profile_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://luminaguard.dev/schemas/vm-profile.schema.json",
        "title": "LuminaGuard VM profile",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "description": {"type": "string"},
            "machine": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "vcpus": {"type": "integer", "minimum": 1, "maximum": 16},
                    "memory_mib": {"type": "integer", "minimum": 128, "maximum": 65536},
                },
            },
        },
    }


def load_vm_profile(name: str, config: ProjectConfig, relative_to: Path) -> VmProfile:
    path = resolve_named_file(name, config.paths.vm_profiles, relative_to, "VM profile")
    return load_vm_profile_file(path)


def load_vm_profile_file(path: Path) -> VmProfile:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "a VM profile must be a mapping")
    errors = check_schema(doc, vm_profile_schema())
    if errors:
        raise InvalidInputs(errors)
    machine = doc.data.get("machine", {})
    return VmProfile(
        name=path.stem,
        path=path,
        description=doc.data.get("description", ""),
        machine=MachineShape(vcpus=machine.get("vcpus", 1), memory_mib=machine.get("memory_mib", 512)),
    )
