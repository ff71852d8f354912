"""The hypervisor backends, by name. The keys feed the `hypervisor` enum of every schema.

Values are import paths, loaded only when a backend is used, so `lg validate` never imports a VMM driver.
"""

from __future__ import annotations

import importlib
from typing import Any

from lg.errors import InvalidInput

HYPERVISORS: dict[str, str] = {
    "qemu": "lg.vm.qemu:QemuHypervisor",
}

HYPERVISOR_NAMES: tuple[str, ...] = tuple(HYPERVISORS)


def load_backend_class(name: str) -> Any:
    """The backend class registered under `name`."""
    try:
        target = HYPERVISORS[name]
    except KeyError:
        known = ", ".join(HYPERVISOR_NAMES)
        raise InvalidInput(f"unknown hypervisor {name!r} (known: {known})") from None
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
