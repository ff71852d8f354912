"""The effective security state of a step: what confined it, as the guest kernel reported it, and what is not
enforced. Recorded with every step and shown by `lg status`; it never claims a control that was not applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lg.security.profile import SELINUX_UNENFORCED, VmProfile


def security_state(profile: VmProfile, observed: Mapping[str, Any] | None,
                   vmm: Mapping[str, Any] | None = None, *, network: Mapping[str, Any] | str | None = None,
                   selinux: str = SELINUX_UNENFORCED) -> dict[str, Any]:
    limits = profile.effective_limits
    seen = dict(observed or {})
    extra: dict[str, Any] = {key: seen[key] for key in ("io", "mounts") if key in seen}
    return {
        "profile": profile.name,
        "user": f"{profile.user} (uid {seen.get('uid', '?')}, gid {seen.get('gid', '?')})",
        "capabilities": seen.get("bounding_caps", "unknown: not reported by the guest"),
        "effective_capabilities": seen.get("capeff", "unknown"),
        "no_new_privs": seen.get("no_new_privs", "unknown"),
        "cgroup": {"path": seen.get("cgroup"), "pids_max": limits.pids, "memory_max_mib": limits.memory_mib,
                   "cpu_percent": limits.cpu_percent, "limits_hit": seen.get("limits_hit", {})},
        "seccomp": _seccomp(profile, seen),
        "apparmor": _apparmor(profile, seen),
        "selinux": selinux,
        "network": _network(network),
        "vmm": dict(vmm or {}),
        **extra,
    }


def _network(network: Mapping[str, Any] | str | None) -> dict[str, Any] | str:
    if network is None:
        return "none: the VM has no network device"
    if isinstance(network, str):
        return f"none: {network}"
    return dict(network)


def summary(state: Mapping[str, Any]) -> str:
    """One line for `lg status`."""
    caps = state.get("capabilities")
    caps_text = "none" if caps == [] else ",".join(caps) if isinstance(caps, list) else str(caps)
    cgroup = state.get("cgroup", {})
    hit = {key: value for key, value in cgroup.get("limits_hit", {}).items() if value}
    return (f"user {state.get('user')}; caps {caps_text}; no_new_privs {state.get('no_new_privs')}; "
            f"pids<={cgroup.get('pids_max')} mem<={cgroup.get('memory_max_mib')}MiB cpu<={cgroup.get('cpu_percent')}%"
            + (f" (hit: {hit})" if hit else "") + f"; network {_network_summary(state.get('network'))}; "
            f"seccomp {str(state.get('seccomp')).split(' (')[0]}; apparmor {state.get('apparmor')}; "
            f"selinux: {str(state.get('selinux', SELINUX_UNENFORCED)).split(';')[0]}; "
            f"vmm {_vmm(state.get('vmm', {}))}")


def _network_summary(network: Any) -> str:
    if not isinstance(network, Mapping):
        return str(network).split(":")[0]
    denied = network.get("denied_attempts")
    return f"allow-list [{'; '.join(network.get('allow', []))}]" + (f", {denied} denied" if denied else "")


def _seccomp(profile: VmProfile, seen: Mapping[str, Any]) -> str:
    mode = seen.get("seccomp_mode")
    if profile.seccomp is None:
        return f"unconfined (kernel mode {mode})"
    enforced = "filter enforced" if mode == 2 else f"NOT enforced (kernel mode {mode})"
    return f"{profile.seccomp.name} (sha256 {profile.seccomp.digest[:12]}): {enforced}"


def _apparmor(profile: VmProfile, seen: Mapping[str, Any]) -> str:
    current = seen.get("apparmor", "unknown")
    if profile.apparmor is None:
        return f"unconfined ({current})"
    wanted = f"{profile.apparmor.name} (enforce)"
    return f"{current}: enforced" if current == wanted else f"NOT enforced: the command ran as {current!r}"


def _vmm(vmm: Mapping[str, Any]) -> str:
    if not vmm:
        return "unknown"
    return (f"cgroup mem<={vmm.get('memory_max_mib')}MiB pids<={vmm.get('pids_max')} ({vmm.get('layout')}), "
            "chrooted, qemu -sandbox")
