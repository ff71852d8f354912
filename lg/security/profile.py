"""VM profiles (profiles/vm/*.yaml): the machine shape a step runs on, and its confinement in the guest.

Enforced by this version (lg.guest.confine applies them before the step's command runs, and reports what the
guest kernel shows): the user (unprivileged `lg`, uid 1000, by default), the capability bounding set (empty by
default), no_new_privs (on by default), cgroup v2 limits on pids, memory and CPU, a seccomp filter (OCI
format), an AppArmor profile, io limits on the workspace's disk, read-only paths and tmpfs mounts, and the network
(`none`: the VM has no network device; or an egress allow-list, lg.vm.network). SELinux is never enforced by
this version (no shipped image carries a policy): a profile that asks for it is refused unless it lists
`selinux` under `optional`, and then the step record says "selinux: not enforced (no policy in image)".
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.config.project import project_paths_for, resolve_named_file
from lg.config.schema_check import check_schema
from lg.config.yamlsource import SourceDoc, load_yaml
from lg.errors import InvalidInput, InvalidInputs
from lg.guest.confine import CAPABILITIES as CAPABILITY_NAMES
from lg.model import ProjectConfig, ProjectPaths
from lg.policy.model import Relaxation
from lg.security.apparmor import AppArmorProfile, load_apparmor
from lg.security.egress import Egress, network_schema, parse_network
from lg.security.seccomp import SeccompProfile, Target, capability_names, load_seccomp


@dataclass(frozen=True)
class MachineShape:
    vcpus: int = 1
    memory_mib: int = 512


DEFAULT_SHAPE = MachineShape()
KNOWN_USERS = {"lg": (1000, 1000), "root": (0, 0)}  # the accounts every shipped image has
DEFAULT_PIDS = 512
DEFAULT_SECCOMP = "default"
SHIPPED_SECCOMP = (DEFAULT_SECCOMP, "strict")  # reviewed with lg; any other filter is graded as a relaxation
DEFAULT_APPARMOR = "lg-default"
UNCONFINED = "unconfined"
GUEST_RESERVE_MIB = 64  # what the guest kernel and agent keep when a profile gives no memory limit
OPTIONAL_CONTROLS = ("selinux", "network", "io")  # may be skipped, and recorded so, where this host cannot
IO_KEYS = ("read_bps", "write_bps", "read_iops", "write_iops")
SELINUX_UNENFORCED = "not enforced (no policy in image)"


@dataclass(frozen=True)
class SELinux:
    label: str
    mode: str  # enforcing | permissive


@dataclass(frozen=True)
class Limits:
    """cgroup v2 limits of the step's processes in the guest."""

    pids: int
    memory_mib: int
    cpu_percent: int  # of one vCPU: 200 is two full vCPUs
    io: tuple[tuple[str, int], ...] = ()  # io.max on the workspace's disk: (read_bps|write_bps|..., value)


@dataclass(frozen=True)
class VmProfile:
    name: str
    path: Path
    description: str
    machine: MachineShape
    user: str = "lg"
    keep_capabilities: tuple[str, ...] = ()
    no_new_privileges: bool = True
    limits: Limits | None = None  # None: the defaults for the machine shape (see `effective_limits`)
    seccomp: SeccompProfile | None = None  # None: unconfined, a relaxation
    apparmor: AppArmorProfile | None = None  # None: unconfined, a relaxation
    network: Egress | None = None  # None: no network device at all
    selinux: SELinux | None = None
    read_only_paths: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()  # controls that may go unenforced where the host cannot enforce them

    @property
    def uid_gid(self) -> tuple[int, int]:
        return KNOWN_USERS[self.user]

    @property
    def effective_limits(self) -> Limits:
        return self.limits or default_limits(self.machine)

    def confinement(self, kernel_release: str | None = None) -> dict[str, Any]:
        """What the guest agent applies before the step's command (lg.guest.confine), for a guest running
        `kernel_release` (the image's; None: unknown, and the seccomp filter's minKernel rules are decided the
        way that allows less)."""
        limits = self.effective_limits
        confinement: dict[str, Any] = {
            "keep_caps": list(self.keep_capabilities), "no_new_privs": self.no_new_privileges,
            "pids": limits.pids, "memory_bytes": limits.memory_mib << 20, "cpu_percent": limits.cpu_percent}
        if self.seccomp is not None:
            confinement["seccomp"] = self.seccomp.for_kernel(kernel_release)
        if self.apparmor is not None:
            confinement["apparmor"] = self.apparmor.for_guest()
        if limits.io:
            confinement["io"] = dict(limits.io)
            confinement["io_optional"] = "io" in self.optional
        if self.read_only_paths:
            confinement["read_only_paths"] = list(self.read_only_paths)
        if self.tmpfs:
            confinement["tmpfs"] = list(self.tmpfs)
        return confinement

    def relaxations(self) -> list[Relaxation]:
        """How this profile weakens the default one: graded by the risk policy before a step runs."""
        found = []
        if self.uid_gid[0] == 0:
            found.append(Relaxation("privileged_user", "root"))
        if self.machine.memory_mib > DEFAULT_SHAPE.memory_mib:
            found.append(Relaxation("memory", f"{self.machine.memory_mib} MiB"))
        if self.machine.vcpus > DEFAULT_SHAPE.vcpus:
            found.append(Relaxation("vcpus", str(self.machine.vcpus)))
        found.extend(Relaxation("capability", name) for name in self.keep_capabilities)
        if not self.no_new_privileges:
            found.append(Relaxation("no_new_privileges_off"))
        if self.seccomp is None:
            found.append(Relaxation("seccomp_off"))
        elif self.seccomp.name not in SHIPPED_SECCOMP or self.seccomp.path.parent.name != "seccomp":
            found.append(Relaxation("seccomp_custom", self.seccomp.name))
        if self.apparmor is None:
            found.append(Relaxation("apparmor_off"))
        elif self.apparmor.path.name != DEFAULT_APPARMOR or self.apparmor.path.parent.name != "apparmor":
            found.append(Relaxation("apparmor_custom", self.apparmor.name))
        if self.network is not None:
            found.extend(Relaxation("network", entry.label) for entry in self.network.allow)
        return found


def default_limits(machine: MachineShape) -> Limits:
    return Limits(pids=DEFAULT_PIDS, memory_mib=max(64, machine.memory_mib - GUEST_RESERVE_MIB),
                  cpu_percent=100 * machine.vcpus)


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
            "capabilities": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"keep": {"type": "array", "uniqueItems": True, "items": {"enum": list(CAPABILITY_NAMES)},
                                        "description": "capabilities left in the bounding set (default: none)"}},
            },
            "no_new_privileges": {"type": "boolean",
                                  "description": "forbid gaining privileges through exec (default true)"},
            "cgroups": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "pids": {"type": "integer", "minimum": 8, "maximum": 65536},
                    "memory_mib": {"type": "integer", "minimum": 16, "maximum": 65536,
                                   "description": "must leave the guest some memory: below machine.memory_mib"},
                    "cpu_percent": {"type": "integer", "minimum": 1, "maximum": 1600,
                                    "description": "of one vCPU (200 = two vCPUs)"},
                    "io": {"type": "object", "additionalProperties": False, "minProperties": 1,
                           "description": "io.max on the disk that holds the workspace (bytes or operations per "
                                          "second)",
                           "properties": {key: {"type": "integer", "minimum": 4096 if key.endswith("bps") else 1,
                                                "maximum": 1 << 40} for key in IO_KEYS}},
                },
            },
            "apparmor": {"type": "string", "minLength": 1,
                         "description": "an AppArmor profile file: a name in profiles/apparmor (default: "
                                        "lg-default), a path, or unconfined (a relaxation)"},
            "seccomp": {"type": "string", "minLength": 1,
                        "description": "an OCI seccomp profile: a name in profiles/seccomp (default: default), a "
                                       "path, or unconfined (a relaxation)"},
            "network": network_schema(),
            "selinux": {
                "type": "object", "additionalProperties": False, "required": ["label"],
                "description": "an SELinux label for the step; enforced only where the image carries a policy "
                               "(no shipped image does: list selinux under optional to run without it)",
                "properties": {"label": {"type": "string",
                                         "pattern": "^[a-z0-9_]+:[a-z0-9_]+:[a-z0-9_]+(:[a-z0-9_.:,-]+)?$"},
                               "mode": {"enum": ["enforcing", "permissive"]}},
            },
            "read_only_paths": {"type": "array", "uniqueItems": True, "items": {"type": "string", "pattern": "^/"},
                                "description": "absolute guest paths the step sees read-only"},
            "tmpfs": {"type": "array", "uniqueItems": True, "items": {"type": "string", "pattern": "^/"},
                      "description": "absolute guest paths that get a fresh, empty tmpfs for the step"},
            "optional": {"type": "array", "uniqueItems": True, "items": {"enum": list(OPTIONAL_CONTROLS)},
                         "description": "controls that may go unenforced where this host or image cannot enforce "
                                        "them (recorded as not enforced); any other unenforceable control refuses "
                                        "the step (exit 5)"},
        },
    }


def load_vm_profile(name: str, config: ProjectConfig, relative_to: Path) -> VmProfile:
    path = resolve_named_file(name, config.paths.vm_profiles, relative_to, "VM profile")
    return load_vm_profile_file(path, config.paths)


def load_vm_profile_file(path: Path, paths: ProjectPaths | None = None) -> VmProfile:
    """The profile in `path` with its seccomp and AppArmor parts, looked up by name in `paths` (default: the
    project around the file). A run loads each of its profiles once (lg.inputs), so nothing is cached here."""
    doc = load_yaml(path)
    paths = paths or project_paths_for(path.parent)
    if not isinstance(doc.data, dict):
        raise doc.error((), "a VM profile must be a mapping")
    errors = check_schema(doc, vm_profile_schema())
    if errors:
        raise InvalidInputs(errors)
    raw_machine = doc.data.get("machine", {})
    machine = MachineShape(vcpus=raw_machine.get("vcpus", 1), memory_mib=raw_machine.get("memory_mib", 512))
    return VmProfile(
        name=path.stem,
        path=path,
        description=doc.data.get("description", ""),
        machine=machine,
        user=doc.data.get("user", "lg"),
        keep_capabilities=tuple(doc.data.get("capabilities", {}).get("keep", ())),
        no_new_privileges=doc.data.get("no_new_privileges", True),
        limits=_limits(doc, machine),
        seccomp=_seccomp(doc, path, paths.seccomp),
        apparmor=_apparmor(doc, path, paths.apparmor),
        network=parse_network(doc),
        selinux=_selinux(doc),
        read_only_paths=_guest_paths(doc, "read_only_paths"),
        tmpfs=_guest_paths(doc, "tmpfs"),
        optional=tuple(doc.data.get("optional", ())),
    )


def _selinux(doc: SourceDoc) -> SELinux | None:
    raw = doc.data.get("selinux")
    return None if raw is None else SELinux(raw["label"], raw.get("mode", "enforcing"))


def _guest_paths(doc: SourceDoc, key: str) -> tuple[str, ...]:
    paths = []
    for index, raw in enumerate(doc.data.get(key, ())):
        normal = posixpath.normpath(raw)
        if "\0" in raw or normal in ("/", "/proc", "/sys", "/dev") or normal.startswith(("/proc/", "/sys/", "/dev/")):
            raise doc.error((key, index), f"{raw!r}: the guest's root and kernel filesystems cannot be remounted "
                                          "for a step")
        paths.append(normal)
    return tuple(paths)


def _apparmor(doc: SourceDoc, path: Path, directories: tuple[Path, ...]) -> AppArmorProfile | None:
    name = doc.data.get("apparmor", DEFAULT_APPARMOR)
    if name == UNCONFINED:
        return None
    candidate = (path.parent / name) if "/" in name else next(
        (directory / name for directory in directories if (directory / name).is_file()), None)
    if candidate is None or not candidate.is_file():
        looked = str(candidate) if candidate else ", ".join(str(d) for d in directories)
        raise doc.error(("apparmor",), f"no AppArmor profile {name!r} (looked in {looked})")
    return load_apparmor(candidate.resolve())


def _seccomp(doc: SourceDoc, path: Path, directories: tuple[Path, ...]) -> SeccompProfile | None:
    name = doc.data.get("seccomp", DEFAULT_SECCOMP)
    if name == UNCONFINED:
        return None
    try:
        # Docker's conditional rules are decided for the capabilities this profile keeps; the guest kernel is
        # not known until a step's image is (SeccompProfile.for_kernel), so here it is decided as unknown
        target = Target(capability_names(doc.data.get("capabilities", {}).get("keep", ())))
        return load_seccomp(resolve_named_file(name, directories, path.parent, "seccomp profile"), target)
    except InvalidInput as error:
        if isinstance(error, InvalidInputs) or error.location is not None:
            raise  # problems inside the seccomp file: they name its own file and line
        raise doc.error(("seccomp",), error.message) from None


def _limits(doc: SourceDoc, machine: MachineShape) -> Limits | None:
    raw = doc.data.get("cgroups")
    if raw is None:
        return None
    base = default_limits(machine)
    memory = raw.get("memory_mib", base.memory_mib)
    if memory >= machine.memory_mib:
        raise doc.error(("cgroups", "memory_mib"), f"{memory} MiB leaves the guest nothing: it must be below "
                                                   f"machine.memory_mib ({machine.memory_mib})")
    cpu = raw.get("cpu_percent", base.cpu_percent)
    if cpu > 100 * machine.vcpus:
        raise doc.error(("cgroups", "cpu_percent"), f"{cpu}% is more than the {machine.vcpus} vCPU(s) of the "
                                                    "machine can give")
    io = tuple((key, int(raw["io"][key])) for key in IO_KEYS if key in raw.get("io", {}))
    return Limits(pids=raw.get("pids", base.pids), memory_mib=memory, cpu_percent=cpu, io=io)
