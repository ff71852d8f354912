"""`lg profile check PROFILE...`: validate VM profiles and compile their seccomp and AppArmor parts, run nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lg.cli.output import emit_json, json_option
from lg.errors import ExitCode


@click.group()
def profile() -> None:
    """Check VM profiles (capabilities, seccomp, AppArmor, cgroups, network)."""


@profile.command()
@click.argument("profiles", metavar="PROFILE...", nargs=-1, required=True)
@json_option
def check(profiles: tuple[str, ...], as_json: bool) -> int:
    """Validate each PROFILE (a name in profiles/vm or a path), compile its seccomp filter with libseccomp and
    its AppArmor profile with apparmor_parser, and print what a step under it gets. Boots nothing."""
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.security.profile import load_vm_profile  # noqa: PLC0415

    config = load_project_config()
    reports = [_report(load_vm_profile(name, config, Path.cwd())) for name in profiles]
    if as_json:
        emit_json(reports)
        return ExitCode.OK
    for report in reports:
        click.echo(f"ok: {report['path']}")
        for key in ("user", "capabilities", "no_new_privileges", "cgroups", "seccomp", "apparmor", "selinux",
                    "network", "mounts", "optional", "relaxations"):
            click.echo(f"  {key + ':':<19} {report[key]}")
        for line in report["seccomp_ignored"]:
            click.echo(f"  seccomp ignored:    {line}")
    return ExitCode.OK


def _report(vm_profile: Any) -> dict[str, Any]:
    limits = vm_profile.effective_limits
    seccomp, apparmor = vm_profile.seccomp, vm_profile.apparmor
    return {
        "path": str(vm_profile.path),
        "user": vm_profile.user,
        "capabilities": list(vm_profile.keep_capabilities) or "none (empty bounding set)",
        "no_new_privileges": vm_profile.no_new_privileges,
        "cgroups": {"pids": limits.pids, "memory_mib": limits.memory_mib, "cpu_percent": limits.cpu_percent,
                    **({"io": dict(limits.io)} if limits.io else {})},
        "seccomp": f"{seccomp.name} ({len(seccomp.compiled['rules'])} rules, sha256 {seccomp.digest[:12]}), "
                   "compiled with libseccomp for x86_64 and the capabilities kept (guest kernel unknown here)"
                   if seccomp else "unconfined",
        # Names of other architectures or unknown to libseccomp, and Docker's conditional rules that do not
        # apply to this guest: left out of the filter, as runc leaves them out
        "seccomp_ignored": list(seccomp.ignored) if seccomp else [],
        "apparmor": f"{apparmor.name} from {apparmor.path.name} (sha256 {apparmor.digest[:12]}), compiled by "
                    "apparmor_parser" if apparmor else "unconfined",
        "selinux": (f"{vm_profile.selinux.label} ({vm_profile.selinux.mode}) asked; " if vm_profile.selinux else "")
                   + "not enforced (no policy in the shipped images)"
                   + ("; the step is refused unless selinux is optional" if vm_profile.selinux
                      and "selinux" not in vm_profile.optional else ""),
        "network": "none (no network device)" if vm_profile.network is None else
                   "allow-list: " + "; ".join(entry.label for entry in vm_profile.network.allow)
                   + " (names resolved when the VM starts; no DNS server in the guest)",
        "mounts": {"read_only": list(vm_profile.read_only_paths), "tmpfs": list(vm_profile.tmpfs)},
        "optional": list(vm_profile.optional) or "none (every control is enforced or the step is refused)",
        "relaxations": [f"{r.kind}: {r.detail}" if r.detail else r.kind for r in vm_profile.relaxations()] or "none",
    }
