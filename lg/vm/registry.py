"""The hypervisor backends, by name: a literal table of factories, as pre-commit's all_languages.py is.

Each factory imports its backend's module only when called, so `lg validate` (and anything else that never
boots a VM) never imports a VMM driver. The keys are lg.model.HYPERVISOR_NAMES; the schemas accept those and
`auto` (lg.model.HYPERVISOR_CHOICES), which `resolve` turns into the first backend of AUTO_ORDER whose probe
says it can run VMs on this host. Adding a backend: a module in lg/vm/, a factory here, its name there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lg.errors import EnvironmentUnfit, InvalidInput
from lg.model import AUTO_HYPERVISOR, ProjectConfig
from lg.vm.api import HostProbe, Hypervisor

BackendFactory = Callable[[ProjectConfig], Hypervisor]


def _qemu(config: ProjectConfig) -> Hypervisor:
    from lg.vm.qemu import QemuHypervisor  # noqa: PLC0415 - loaded on use

    return QemuHypervisor(config)


def _firecracker(config: ProjectConfig) -> Hypervisor:
    from lg.vm.firecracker import FirecrackerHypervisor  # noqa: PLC0415 - loaded on use

    return FirecrackerHypervisor(config)


def _cloud_hypervisor(config: ProjectConfig) -> Hypervisor:
    from lg.vm.cloud_hypervisor import CloudHypervisor  # noqa: PLC0415 - loaded on use

    return CloudHypervisor(config)


def _apple(config: ProjectConfig) -> Hypervisor:
    from lg.vm.apple import AppleHypervisor  # noqa: PLC0415 - loaded on use

    return AppleHypervisor(config)


HYPERVISORS: dict[str, BackendFactory] = {
    "qemu": _qemu,
    "firecracker": _firecracker,
    "cloud-hypervisor": _cloud_hypervisor,
    "apple": _apple,
}

AUTO_ORDER: tuple[str, ...] = ("firecracker", "cloud-hypervisor", "apple", "qemu")
"""What `auto` prefers, best first: the two KVM-only VMMs (smallest, fastest to restore, Firecracker with its
jailer), Apple's framework on a Mac, and QEMU last, because it is the one that also runs without KVM (TCG)."""


def hypervisor_for(config: ProjectConfig, name: str | None = None) -> Hypervisor:
    """The backend `name` (default: lg.yaml's `hypervisor`), constructed for this project; `auto` is the one
    `resolve` picks."""
    return HYPERVISORS[resolve(config, name)](config)


def check_name(name: str) -> str:
    """`name` if it is a backend or `auto`; else InvalidInput (exit 2) listing the choices."""
    if name != AUTO_HYPERVISOR and name not in HYPERVISORS:
        raise InvalidInput(f"unknown hypervisor {name!r} (known: {', '.join((*HYPERVISORS, AUTO_HYPERVISOR))})")
    return name


@dataclass(frozen=True)
class Candidate:
    """One backend as `auto` saw it."""

    name: str
    probe: HostProbe

    @property
    def why_not(self) -> str:
        fatal = [problem.message for problem in self.probe.problems if problem.fatal]
        return "; ".join(fatal) or "its probe found no way to run VMs here"


def survey(config: ProjectConfig) -> list[Candidate]:
    """Every backend of AUTO_ORDER, probed (cheaply: no test boot), best first."""
    return [Candidate(name, HYPERVISORS[name](config).probe()) for name in AUTO_ORDER]


def resolve(config: ProjectConfig, name: str | None = None) -> str:
    """The backend name `name` (default: lg.yaml's) stands for: itself, or for `auto` the first backend of
    AUTO_ORDER whose probe can run VMs here (EnvironmentUnfit, exit 5, with every backend's reason if none)."""
    chosen = check_name(name or config.hypervisor)
    if chosen != AUTO_HYPERVISOR:
        return chosen
    candidates = survey(config)
    for candidate in candidates:
        if candidate.probe.can_run:
            return candidate.name
    reasons = "; ".join(f"{candidate.name}: {candidate.why_not}" for candidate in candidates)
    raise EnvironmentUnfit(f"hypervisor auto found no backend that can run VMs on this host ({reasons})",
                           fix="run `lg doctor` for each backend's fix (QEMU alone also runs without KVM)")
