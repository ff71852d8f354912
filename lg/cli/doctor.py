"""`lg doctor`: what this host can do (every hypervisor backend, KVM or TCG, images, state directory), with a fix
per problem."""

from __future__ import annotations

import click

from lg.cli.output import color_enabled, emit_json, json_option
from lg.errors import ExitCode

MARKS = {"ok": ("ok", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red"), "off": ("off", "blue")}


@click.command()
@click.option("--no-boot", is_flag=True, help="Do not boot a test guest to find out whether KVM works.")
@json_option
def doctor(no_boot: bool, as_json: bool) -> int:
    """Report what this host can do for lg, with a fix for each problem.

    Exit 0 if VMs can run (even if only under TCG), 5 if they cannot run at all.
    """
    from lg.config.project import load_project_config  # noqa: PLC0415
    from lg.pool.doctor import pool_check  # noqa: PLC0415
    from lg.vm.hostcheck import host_report  # noqa: PLC0415

    config = load_project_config()
    report = host_report(config, boot_test=not no_boot).including(pool_check(config))
    if as_json:
        emit_json(report.as_dict())
    else:
        for check in report.checks:
            label, colour = MARKS[check.status]
            mark = click.style(f"{label:<5}", fg=colour) if color_enabled() else f"{label:<5}"
            click.echo(f"{mark} {check.name:<16} {check.detail}")
            if check.fix and check.status not in ("ok", "off"):
                click.echo(f"{'':<6}{'':<16} fix: {check.fix}")
        verdict = (f"VMs can run here (accelerator {report.accelerator})" if report.can_run_vms
                   else "VMs cannot run on this host yet")
        click.echo(verdict)
    return ExitCode.OK if report.can_run_vms else ExitCode.ENVIRONMENT
