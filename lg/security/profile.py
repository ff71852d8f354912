"""VM profiles (profiles/vm/*.yaml): the machine shape a step runs on, and (issue 7) its confinement.

This version enforces the machine shape and the user a step runs as (unprivileged `lg`, uid 1000, by default).
Other confinement keys (capabilities, seccomp, AppArmor, cgroups, network) are not accepted yet: a profile that
asks for them is refused by the schema rather than silently not enforced.
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
from lg.policy.model import Relaxation


@dataclass(frozen=True)
class MachineShape:
    vcpus: int = 1
    memory_mib: int = 512


DEFAULT_SHAPE = MachineShape()
KNOWN_USERS = {"lg": (1000, 1000), "root": (0, 0)}  # the accounts every shipped image has


@dataclass(frozen=True)
class VmProfile:
    name: str
    path: Path
    description: str
    machine: MachineShape
    user: str = "lg"

    @property
    def uid_gid(self) -> tuple[int, int]:
        return KNOWN_USERS[self.user]

    def relaxations(self) -> list[Relaxation]:
        """How this profile weakens the default one: graded by the risk policy before a step runs."""
        found = []
        if self.uid_gid[0] == 0:
            found.append(Relaxation("privileged_user", "root"))
        if self.machine.memory_mib > DEFAULT_SHAPE.memory_mib:
            found.append(Relaxation("memory", f"{self.machine.memory_mib} MiB"))
        if self.machine.vcpus > DEFAULT_SHAPE.vcpus:
            found.append(Relaxation("vcpus", str(self.machine.vcpus)))
        return found


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
            "user": {"enum": list(KNOWN_USERS),
                     "description": "who the step runs as in the guest: lg (uid 1000, default) or root"},
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
        user=doc.data.get("user", "lg"),
    )
