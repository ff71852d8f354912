"""What a VM profile asks that this host or image cannot enforce, decided before any VM starts.

Fails closed: a control that cannot be enforced refuses the step (EnvironmentUnfit, exit 5), unless the profile
lists it under `optional`, and then the step record says plainly that it was not enforced.
"""

from __future__ import annotations

from dataclasses import dataclass

from lg.errors import EnvironmentUnfit
from lg.security.profile import SELINUX_UNENFORCED, VmProfile
from lg.vm import network
from lg.vm.api import NetworkSpec


@dataclass(frozen=True)
class HostPlan:
    network: NetworkSpec | None  # what the VM gets; None: no network device
    network_note: str | None  # why an optional allow-list was not applied
    selinux: str  # the step record's selinux line


def plan_for(profile: VmProfile) -> HostPlan:
    return HostPlan(*_network(profile), _selinux(profile))


def _network(profile: VmProfile) -> tuple[NetworkSpec | None, str | None]:
    if profile.network is None:
        return None, None
    try:
        network.check_host()
    except EnvironmentUnfit as unfit:
        if "network" not in profile.optional:
            raise EnvironmentUnfit(f"VM profile {profile.path}: {unfit.message}", fix=unfit.fix) from None
        return None, f"allow-list not enforced here ({unfit.message}): the VM has no network device instead"
    return profile.network.to_spec(network.resolve_ipv4), None


def _selinux(profile: VmProfile) -> str:
    if profile.selinux is None:
        return SELINUX_UNENFORCED
    wanted = f"{profile.selinux.label} ({profile.selinux.mode})"
    if "selinux" not in profile.optional:
        raise EnvironmentUnfit(
            f"VM profile {profile.path}: selinux {wanted} cannot be enforced: lg's guest images carry no SELinux "
            "policy (their kernel runs AppArmor)",
            fix="remove the selinux key, or list selinux under `optional:` to run without it")
    return f"{SELINUX_UNENFORCED}; asked for {wanted}, optional"
