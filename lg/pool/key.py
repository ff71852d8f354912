"""What makes two VMs interchangeable: a pool only hands out a VM for the key it was made for."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lg.vm.api import VmSpec


@dataclass(frozen=True)
class PoolKey:
    backend: str
    image_digest: str
    vcpus: int
    memory_mib: int
    accelerator: str  # as asked (auto, kvm, tcg): the template records which one ran
    profile_digest: str  # the security profile the VM is for (its confinement, as the guest applies it)
    network_digest: str = "none"  # the VM's egress allow-list, as resolved ("none": no network device)

    @property
    def label(self) -> str:
        network = "" if self.network_digest == "none" else f"/net-{self.network_digest[:8]}"
        return (f"{self.backend}/{self.image_digest[:12]}/{self.vcpus}cpu-{self.memory_mib}m/"
                f"{self.accelerator}/{self.profile_digest[:12]}{network}")

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "image_digest": self.image_digest, "vcpus": self.vcpus,
                "memory_mib": self.memory_mib, "accelerator": self.accelerator,
                "profile_digest": self.profile_digest, "network_digest": self.network_digest}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoolKey:
        return cls(str(data["backend"]), str(data["image_digest"]), int(data["vcpus"]), int(data["memory_mib"]),
                   str(data["accelerator"]), str(data["profile_digest"]), str(data.get("network_digest", "none")))


def profile_digest(confinement: dict[str, Any]) -> str:
    """A stable digest of a profile's confinement, as the guest agent receives it."""
    return hashlib.sha256(json.dumps(confinement, sort_keys=True).encode()).hexdigest()


def key_for(backend: str, spec: VmSpec, confinement_digest: str) -> PoolKey:
    network = "none" if spec.network is None else hashlib.sha256(repr(spec.network).encode()).hexdigest()
    return PoolKey(backend, spec.image.digest, spec.vcpus, spec.memory_mib, spec.accelerator, confinement_digest,
                   network)
