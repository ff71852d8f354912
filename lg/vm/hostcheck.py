"""What this host can do for VMs, check by check, each problem with its fix (the core of `lg doctor`).

The hypervisor is probed through lg.vm.registry. What the pool adds (its daemon, its templates) is lg.pool's to
check (lg.pool.doctor): lg.vm knows nothing of lg.pool, and `lg doctor` puts the two reports together.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from lg.errors import LgError
from lg.model import AUTO_HYPERVISOR, HYPERVISOR_NAMES, ProjectConfig
from lg.vm import host
from lg.vm.api import GuestImage, HostProbe
from lg.vm.registry import HYPERVISORS, resolve
from lg.vm.rundir import reap_leftovers

Status = Literal["ok", "warn", "fail", "off"]  # off: a backend this host cannot run and the project does not use
PROBE_IMAGE = "tiny"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class HostReport:
    checks: tuple[Check, ...]
    accelerator: str | None  # what `accelerator: auto` would use; None if VMs cannot run
    can_run_vms: bool

    def including(self, *checks: Check) -> HostReport:
        """This report with more checks, from a part of lg above lg.vm (the pool's)."""
        return replace(self, checks=(*self.checks, *checks))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": all(check.status != "fail" for check in self.checks),
            "can_run_vms": self.can_run_vms,
            "accelerator": self.accelerator,
            "checks": [check.__dict__ for check in self.checks],
        }


def host_report(config: ProjectConfig, boot_test: bool = True) -> HostReport:
    images, image_check = built_images(config)
    probe_image = next((image for image in images if image.name == PROBE_IMAGE), images[0] if images else None)
    try:
        name = resolve(config)
        probe = HYPERVISORS[name](config).probe(probe_image if boot_test else None)
    except LgError as error:
        failed = Check("hypervisor", "fail", f"backend {config.hypervisor!r} unusable: {error}")
        return HostReport((failed, *other_backends(config, None), image_check), None, False)
    checks = [
        *hypervisor_checks(probe, chosen_by_auto=config.hypervisor == AUTO_HYPERVISOR),
        *other_backends(config, name),
        image_check,
        state_dir_check(config.state_dir),
        leftovers_check(config.state_dir / "vms"),
        *tool_checks(),
    ]
    can_run = probe.can_run and bool(images)
    return HostReport(tuple(checks), probe.auto_accelerator if can_run else None, can_run)


def other_backends(config: ProjectConfig, chosen: str | None) -> list[Check]:
    """Every backend but the one in use, as its probe sees this host (`lg doctor` lists them all)."""
    checks = []
    for name in HYPERVISOR_NAMES:
        if name == chosen:
            continue
        try:
            probe = HYPERVISORS[name](config).probe()
        except LgError as error:
            checks.append(Check(name, "off", f"cannot be probed: {error}"))
            continue
        if probe.can_run:
            checks.append(Check(name, "ok", f"can run VMs here ({probe.auto_accelerator}, {probe.binary} "
                                f"{probe.version or ''}".rstrip() + f"); not used: lg.yaml says {config.hypervisor}"))
            continue
        fatal = [problem for problem in probe.problems if problem.fatal]
        why = "; ".join(problem.message for problem in fatal) or "cannot run VMs here"
        checks.append(Check(name, "off", f"unavailable: {why}", next((p.fix for p in fatal if p.fix), None)))
    return checks


def hypervisor_checks(probe: HostProbe, chosen_by_auto: bool = False) -> list[Check]:
    fatal = [problem for problem in probe.problems if problem.fatal]
    if probe.binary is None or not probe.can_run:
        missing = fatal[0] if fatal else None
        return [Check(probe.backend, "fail", missing.message if missing else "not installed",
                      missing.fix if missing else None)]
    by_auto = " (hypervisor: auto chose it)" if chosen_by_auto else ""
    checks = [Check(probe.backend, "ok", f"{probe.binary} {probe.version or '(version unknown)'}{by_auto}")]
    checks += [Check(f"{probe.backend}:note", "warn", problem.message, problem.fix)
               for problem in probe.problems if not problem.fatal and "KVM" not in problem.message]
    kvm = probe.kvm
    if not kvm.present:
        checks.append(Check("kvm", "warn", f"{kvm.reason}; VMs run under TCG (software, slower)",
                            "enable (nested) virtualisation and load kvm_intel or kvm_amd"))
    elif kvm.usable is None:
        checks.append(Check("kvm", "warn", f"{kvm.reason}; auto will test it on the first boot",
                            f"build an image (lg image build {PROBE_IMAGE}) and run lg doctor again"))
    elif not kvm.usable:
        checks.append(Check("kvm", "warn", f"/dev/kvm present, but {kvm.reason}; VMs run under TCG",
                            "nothing to do for correctness; for speed, use a host where KVM boots guests"))
    else:
        checks.append(Check("kvm", "ok", kvm.reason))
    if probe.backend != "qemu":
        return checks  # the other VMMs run under KVM only: no software emulation to report
    tsc = host.tsc_khz()
    detail = f"software emulation available; auto uses {probe.auto_accelerator}"
    checks.append(Check("tcg", "ok", detail + (f" (host TSC {tsc} kHz)" if tsc else "")))
    return checks


def built_images(config: ProjectConfig) -> tuple[Sequence[GuestImage], Check]:
    try:
        # Looked up at run time: the image store is another part of lg, and a broken one must not break doctor.
        store = importlib.import_module("lg.images.store").ImageStore(config.cache_dir)
    except (ImportError, AttributeError):
        return [], Check("images", "fail", "the image store (lg.images) is not installed")
    try:
        images: list[GuestImage] = list(store.list())
    except (LgError, OSError) as error:
        return [], Check("images", "fail", f"cannot read the image cache {config.cache_dir}: {error}")
    if not images:
        return [], Check("images", "fail", f"no guest image built in {config.cache_dir}",
                         f"lg image build {PROBE_IMAGE}")
    newest: dict[str, GuestImage] = {}
    for image in images:  # the store lists the newest first
        newest.setdefault(image.name, image)
    names = ", ".join(f"{name} ({image.digest[:12]})" for name, image in sorted(newest.items()))
    older = len(images) - len(newest)
    return images, Check("images", "ok", names + (f"; {older} older build(s) cached" if older else ""))


def state_dir_check(state_dir: Path) -> Check:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".doctor-"):
            pass
    except OSError as error:
        return Check("state_dir", "fail", f"{state_dir} is not writable: {error.strerror}",
                     "set state_dir in lg.yaml (or LG_STATE_DIR) to a writable directory")
    return Check("state_dir", "ok", f"{state_dir} is writable")


def leftovers_check(run_parent: Path) -> Check:
    reaped = reap_leftovers(run_parent)
    if reaped:
        return Check("leftovers", "warn", f"removed {len(reaped)} VM(s) left by killed lg processes: "
                     + ", ".join(reaped))
    return Check("leftovers", "ok", "no VM left behind by a killed lg")


TOOLS = (
    ("qemu-img", "disk overlays over image root filesystems", "apt-get install qemu-utils", "warn"),
    ("ssh-keygen", "signing and verifying approvals", "apt-get install openssh-client", "warn"),
    ("apparmor_parser", "compiling AppArmor profiles for guests", "apt-get install apparmor", "warn"),
    ("nft", "network allow-lists", "apt-get install nftables", "warn"),
)


def tool_checks() -> list[Check]:
    checks = []
    for tool, purpose, fix, severity in TOOLS:
        path = shutil.which(tool)
        if path:
            checks.append(Check(tool, "ok", f"{path} ({purpose})"))
        else:
            checks.append(Check(tool, "warn" if severity == "warn" else "fail", f"not found; needed for {purpose}",
                                fix))
    return checks

