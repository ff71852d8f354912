"""Seccomp profiles in the OCI runtime-spec format (profiles/seccomp/*.json): validated on the host, applied in
the guest by libseccomp (lg.guest.confine), the same library container runtimes use.

Profiles written for container runtimes are taken as they are published (Docker's default.json, Podman's
containers/common seccomp.json): Docker's conditional rules (`includes`/`excludes` by `arches`, `caps` and
`minKernel`) are decided for the guest (x86_64, the capabilities the VM profile keeps, the guest kernel's
version when the image is known), `archMap` and `architectures` keep x86_64 alone, Podman's `"args": null` is no
arguments, and syscall names of other architectures or unknown to libseccomp are left out as runc leaves them
out (libcontainer/seccomp skips a name it cannot resolve). Everything left out is listed in `ignored`, which
`lg profile check` prints.

What stays strict, because it would be a hole: unknown keys, actions and operators are errors naming the file and
line; and an unknown name in a rule that denies it, under a default that allows, is an error (a misspelling
there would leave the call allowed). When the guest kernel's version is unknown (a profile checked without an
image), a `minKernel` rule is decided the way that allows less: one that allows is left out, one that denies is
kept. The validated profile is flattened into the small form the guest agent takes (`compiled`), and its digest
is recorded with every step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit, InvalidInput, InvalidInputs, Location

ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL",
           "SCMP_ACT_TRAP", "SCMP_ACT_LOG")
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
             "SCMP_CMP_MASKED_EQ")
ARCHITECTURES = ("SCMP_ARCH_X86_64",)  # the guests' architecture; other arches' calls are killed by the filter
GUEST_ARCHES = frozenset({"amd64", "x86_64"})  # how Docker's includes/excludes name it (Go's GOARCH), and uname's
TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "comment"}
RULE_KEYS = {"names", "action", "errnoRet", "args", "comment", "includes", "excludes"}
FILTER_KEYS = {"arches", "caps", "minKernel"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}
ALLOWING = frozenset({"SCMP_ACT_ALLOW", "SCMP_ACT_LOG"})
EPERM = 1
_NR_SCMP_ERROR = -1  # libseccomp: a name it does not know; other negative numbers are other arches' calls


@dataclass(frozen=True)
class Target:
    """What Docker's conditional rules are decided for: the guest's capabilities and kernel (None: unknown)."""

    caps: frozenset[str] = frozenset()
    kernel: tuple[int, int] | None = None


def kernel_version(release: str | None) -> tuple[int, int] | None:
    """(major, minor) of a kernel release ("6.1.0-28-cloud-amd64"), or None when there is none to read."""
    match = re.match(r"^(\d+)\.(\d+)", release or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def capability_names(names: Iterable[str]) -> frozenset[str]:
    """Capabilities as Docker's profiles name them: CAP_SYS_ADMIN (a VM profile may say sys_admin)."""
    return frozenset(name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}" for name in names)


@dataclass(frozen=True)
class SeccompProfile:
    name: str
    path: Path
    compiled: dict[str, Any]  # what the guest agent applies (decided for `target`)
    digest: str  # sha256 of `compiled`
    ignored: tuple[str, ...] = ()  # names and rules left out, and why
    source: Any = None  # the parsed file, to decide its conditional rules again for a known kernel
    target: Target = Target()

    def for_kernel(self, release: str | None) -> dict[str, Any]:
        """The compiled filter for a guest running kernel `release` (the image's): `minKernel` rules decided for
        it rather than for an unknown kernel."""
        kernel = kernel_version(release)
        if kernel is None or kernel == self.target.kernel or not _has_kernel_rules(self.source):
            return self.compiled
        compiled, _ = _compile(self.source, _Locator(self.path, ""), [], Target(self.target.caps, kernel))
        return compiled


def _has_kernel_rules(data: Any) -> bool:
    rules = data.get("syscalls") if isinstance(data, dict) else None
    return any(isinstance(rule, dict) and any(isinstance(rule.get(side), dict) and "minKernel" in rule[side]
                                              for side in ("includes", "excludes"))
               for rule in rules or [])


def load_seccomp(path: Path, target: Target = Target()) -> SeccompProfile:
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidInput(f"seccomp profile {path}: cannot read it ({error.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"not valid JSON: {error.msg}", Location(path, error.lineno, error.colno)) from None
    problems: list[InvalidInput] = []
    compiled, ignored = _compile(data, _Locator(path, text), problems, target)
    if problems:
        raise InvalidInputs(problems)
    canonical = json.dumps(compiled, sort_keys=True, separators=(",", ":"))
    return SeccompProfile(path.stem, path, compiled, hashlib.sha256(canonical.encode()).hexdigest(),
                          tuple(ignored), data, target)


class _Locator:
    """Lines of JSON values, found by searching the text (json has no positions): good enough to point at a
    misspelt name or action, which is what people get wrong."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def error(self, key_path: str, message: str, needle: str | None = None) -> InvalidInput:
        line = None
        if needle is not None:
            quoted = json.dumps(needle)
            line = next((number for number, text in enumerate(self.lines, 1) if quoted in text), None)
        return InvalidInput(message, Location(self.path, line, None, key_path))


def _compile(data: Any, where: _Locator, problems: list[InvalidInput],
             target: Target) -> tuple[dict[str, Any], list[str]]:
    ignored: list[str] = []
    if not isinstance(data, dict):
        problems.append(where.error("", "a seccomp profile is a JSON object with defaultAction and syscalls"))
        return {}, ignored
    for key in sorted(set(data) - TOP_KEYS):
        problems.append(where.error(key, f"unknown key {key!r} (known: {', '.join(sorted(TOP_KEYS))})", key))
    default = _action(data.get("defaultAction"), data.get("defaultErrnoRet"), "defaultAction", where, problems)
    ignored.extend(_architectures(data, where, problems))
    rules = []
    for index, raw in enumerate(_list(data.get("syscalls"), "syscalls", where, problems)):
        rule = _rule(raw, f"syscalls[{index}]", where, problems, target, default[0] in ALLOWING, ignored)
        if rule is not None:
            rules.append(rule)
    return {"default": default, "rules": rules}, ignored


def _list(value: Any, key: str, where: _Locator, problems: list[InvalidInput]) -> list[Any]:
    """A JSON list that may be absent or null (Podman writes `"args": null`)."""
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(where.error(key, f"{key} must be a list"))
        return []
    return value


def _architectures(data: dict[str, Any], where: _Locator, problems: list[InvalidInput]) -> list[str]:
    """`architectures` and Docker's `archMap`: the guests run x86_64 alone, and a filter for them names only it
    (calls made through another arch's ABI are killed). Other architectures are left out, and said so."""
    named: list[Any] = list(_list(data.get("architectures"), "architectures", where, problems))
    for index, entry in enumerate(_list(data.get("archMap"), "archMap", where, problems)):
        if not isinstance(entry, dict) or set(entry) - {"architecture", "subArchitectures"}:
            problems.append(where.error(f"archMap[{index}]", "an archMap entry has architecture and "
                                                             "subArchitectures"))
            continue
        named.append(entry.get("architecture"))
        named.extend(_list(entry.get("subArchitectures"), f"archMap[{index}].subArchitectures", where, problems))
    for arch in named:
        if not isinstance(arch, str) or not arch.startswith("SCMP_ARCH_"):
            problems.append(where.error("architectures", f"{arch!r} is not a libseccomp architecture (SCMP_ARCH_...)",
                                        arch if isinstance(arch, str) else None))
    others = sorted({a for a in named if isinstance(a, str) and a.startswith("SCMP_ARCH_")} - set(ARCHITECTURES))
    return [f"architectures {', '.join(others)}: lg guests run {ARCHITECTURES[0]} alone (calls through another "
            "architecture's ABI are killed)"] if others else []


def _action(name: Any, errno: Any, key: str, where: _Locator, problems: list[InvalidInput]) -> list[Any]:
    if name not in ACTIONS:
        problems.append(where.error(key, f"unknown action {name!r} (known: {', '.join(ACTIONS)})",
                                    name if isinstance(name, str) else None))
        return ["SCMP_ACT_KILL_PROCESS", 0]
    if errno is not None and (not isinstance(errno, int) or not 0 <= errno < 4096):
        problems.append(where.error(key, f"errnoRet {errno!r} must be an errno number (0 to 4095)"))
    return [name, errno if isinstance(errno, int) else EPERM if name == "SCMP_ACT_ERRNO" else 0]


def _rule(raw: Any, key: str, where: _Locator, problems: list[InvalidInput], target: Target,
          default_allows: bool, ignored: list[str]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append(where.error(key, "a syscalls entry is an object with names and action"))
        return None
    for unknown in sorted(set(raw) - RULE_KEYS):
        known = ", ".join(sorted(RULE_KEYS))
        problems.append(where.error(f"{key}.{unknown}", f"unknown key {unknown!r} (known: {known})", unknown))
    names = raw.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        problems.append(where.error(f"{key}.names", "names must be a non-empty list of syscall names"))
        names = []
    action = _action(raw.get("action"), raw.get("errnoRet"), f"{key}.action", where, problems)
    args = [_arg(arg, f"{key}.args[{position}]", where, problems)
            for position, arg in enumerate(_list(raw.get("args"), f"{key}.args", where, problems))]
    label = f"{key} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
    why_not = _condition(raw, key, where, problems, target, action[0] in ALLOWING)
    if why_not is not None:
        ignored.append(f"{label}: {why_not}")
        return None
    kept = _resolved(names, key, where, problems, denies=default_allows and action[0] not in ALLOWING,
                     ignored=ignored)
    if names and not kept:
        ignored.append(f"{label}: no syscall of it exists on x86_64")
        return None
    return {"names": kept, "action": action, "args": args}


def _resolved(names: list[str], key: str, where: _Locator, problems: list[InvalidInput], *, denies: bool,
              ignored: list[str]) -> list[str]:
    """The names that are x86_64 syscalls. Others are left out as runc leaves them out, except in a rule that
    denies under a default that allows, where leaving out a misspelt name would allow it."""
    kept = []
    for name in names:
        number = syscall_number(name)
        if number is not None and number >= 0:
            kept.append(name)
        elif denies:
            problems.append(where.error(f"{key}.names", f"unknown syscall {name!r} for x86_64, in a rule that "
                                                        "denies it under a default that allows it", name))
        elif number is None or number == _NR_SCMP_ERROR:
            ignored.append(f"{name}: unknown to this host's libseccomp (newer, or misspelt): left out")
        else:
            ignored.append(f"{name}: not an x86_64 syscall: left out")
    return kept


def _condition(raw: dict[str, Any], key: str, where: _Locator, problems: list[InvalidInput], target: Target,
               allows: bool) -> str | None:
    """Why Docker's includes/excludes leave the rule out for this guest, or None: it applies. A rule applies
    when every `includes` holds (its arches name the guest's, one of its caps is kept, the kernel is at least
    its minKernel) and no `excludes` holds (the same tests)."""
    for side in ("includes", "excludes"):
        found = raw.get(side)
        if found is None or found == {}:
            continue
        if not isinstance(found, dict) or set(found) - FILTER_KEYS:
            problems.append(where.error(f"{key}.{side}", f"{side} has arches, caps and minKernel ({found!r})"))
            return None
        if side == "includes":
            missing = _holds(found, f"{key}.{side}", where, problems, target, allows, side)
            if missing is not None:
                return missing
        elif _excludes(found, f"{key}.{side}", where, problems, target, allows):
            return f"excluded for this guest ({_describe(found)})"
    return None


def _excludes(found: dict[str, Any], key: str, where: _Locator, problems: list[InvalidInput], target: Target,
              allows: bool) -> bool:
    """Docker's `excludes`: any one of its conditions that holds leaves the rule out (the guest's arch is
    named, a named cap is kept, the kernel is at least minKernel; unknown kernel: out if the rule allows)."""
    for field in ("arches", "caps", "minKernel"):
        if field in found and _holds({field: found[field]}, key, where, problems, target, not allows,
                                     "includes") is None:
            return True
    return False


def _holds(found: dict[str, Any], key: str, where: _Locator, problems: list[InvalidInput], target: Target,
           allows: bool, side: str) -> str | None:
    """None when every condition of `found` holds for the target, else why one does not."""
    arches = _list(found.get("arches"), f"{key}.arches", where, problems)
    if arches and not GUEST_ARCHES & set(arches):
        return f"for {', '.join(map(str, arches))} only"
    caps = _list(found.get("caps"), f"{key}.caps", where, problems)
    if caps and not capability_names(str(c) for c in caps) & target.caps:
        return f"needs {' or '.join(map(str, caps))}, which the VM profile does not keep"
    if "minKernel" in found:
        minimum = kernel_version(str(found["minKernel"]))
        if minimum is None:
            problems.append(where.error(f"{key}.minKernel", f"minKernel {found['minKernel']!r} is not a "
                                                            "version like \"4.8\""))
            return None
        if target.kernel is None:
            # Unknown guest kernel: decide the way that allows less (an allowing rule included only on newer
            # kernels is left out; a denying one is kept, and an excludes by kernel does not apply).
            lets_through = allows if side == "includes" else not allows
            return f"needs kernel >= {found['minKernel']}, and the guest's is unknown here" if lets_through else None
        if target.kernel < minimum:
            return f"needs kernel >= {found['minKernel']} (the guest's is {target.kernel[0]}.{target.kernel[1]})"
    return None


def _describe(found: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {value}" for name, value in found.items())


def _arg(raw: Any, key: str, where: _Locator, problems: list[InvalidInput]) -> list[int | str]:
    if not isinstance(raw, dict) or set(raw) - ARG_KEYS or "index" not in raw or "value" not in raw:
        problems.append(where.error(key, f"an argument condition has index, value, valueTwo and op ({raw!r})"))
        return [0, "SCMP_CMP_EQ", 0, 0]
    op = raw.get("op", "SCMP_CMP_EQ")
    if op not in OPERATORS:
        problems.append(where.error(f"{key}.op", f"unknown operator {op!r} (known: {', '.join(OPERATORS)})", op))
    values = [raw.get("index"), raw.get("value"), raw.get("valueTwo", 0)]
    if not all(isinstance(v, int) and v >= 0 for v in values) or values[0] > 5:
        problems.append(where.error(key, "index must be 0 to 5 and value/valueTwo non-negative integers"))
        return [0, "SCMP_CMP_EQ", 0, 0]
    return [values[0], op, values[1], values[2]]


@functools.lru_cache(maxsize=1)
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        library = ctypes.CDLL(name)
    except OSError:
        raise EnvironmentUnfit("libseccomp is not installed on this host; it checks seccomp profiles",
                               fix="apt-get install libseccomp2 (scripts/setup does)") from None
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_syscall_resolve_name.restype = ctypes.c_int
    return library


@functools.lru_cache(maxsize=1024)
def syscall_number(name: str) -> int | None:
    """The x86_64 number of a syscall; a negative number other than __NR_SCMP_ERROR (-1) for a call that
    exists only on other architectures (libseccomp's pseudo numbers); None for a name it does not know."""
    number: int = _libseccomp().seccomp_syscall_resolve_name(name.encode())
    return None if number == _NR_SCMP_ERROR else number
