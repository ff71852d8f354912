"""The hypervisor backends, by name: a literal table of factories, as pre-commit's all_languages.py is.

Each factory imports its backend's module only when called, so `lg validate` (and anything else that never
boots a VM) never imports a VMM driver. The keys are lg.model.HYPERVISOR_NAMES, the `hypervisor` enum of every
schema; a test keeps the two equal. Adding a backend: a module in lg/vm/, a factory here, its name there.
"""

from __future__ import annotations

from collections.abc import Callable

from lg.errors import InvalidInput
from lg.model import ProjectConfig
from lg.vm.api import Hypervisor

BackendFactory = Callable[[ProjectConfig], Hypervisor]


def _qemu(config: ProjectConfig) -> Hypervisor:
    from lg.vm.qemu import QemuHypervisor  # noqa: PLC0415 - loaded on use

    return QemuHypervisor(config)


HYPERVISORS: dict[str, BackendFactory] = {
    "qemu": _qemu,
}



def hypervisor_for(config: ProjectConfig, name: str | None = None) -> Hypervisor:
    """The backend `name` (default: lg.yaml's `hypervisor`), constructed for this project."""
    chosen = name or config.hypervisor
    factory = HYPERVISORS.get(chosen)
    if factory is None:
        raise InvalidInput(f"unknown hypervisor {chosen!r} (known: {', '.join(HYPERVISORS)})")
    return factory(config)
