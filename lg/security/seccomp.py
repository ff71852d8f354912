"""Seccomp profiles in the OCI runtime-spec format (profiles/seccomp/*.json): validated on the host, applied in
the guest by libseccomp (lg.guest.confine), the same library container runtimes use.

Validation is strict, because a filter that silently skips a misspelt syscall is a hole: unknown keys, actions
and comparison operators, and syscall names libseccomp does not know for x86_64, are errors naming the file and
line. The validated profile is flattened into the small form the guest agent takes (`compiled`), and its digest
is recorded with every step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lg.errors import EnvironmentUnfit, InvalidInput, InvalidInputs, Location

ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL",
           "SCMP_ACT_TRAP", "SCMP_ACT_LOG")
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
             "SCMP_CMP_MASKED_EQ")
ARCHITECTURES = ("SCMP_ARCH_X86_64",)  # the guests' architecture; other arches' calls are killed by the filter
TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "syscalls", "comment"}
RULE_KEYS = {"names", "action", "errnoRet", "args", "comment"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}
EPERM = 1


@dataclass(frozen=True)
class SeccompProfile:
    name: str
    path: Path
    compiled: dict[str, Any]  # what the guest agent applies
    digest: str  # sha256 of `compiled`


def load_seccomp(path: Path) -> SeccompProfile:
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidInput(f"seccomp profile {path}: cannot read it ({error.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidInput(f"not valid JSON: {error.msg}", Location(path, error.lineno, error.colno)) from None
    problems: list[InvalidInput] = []
    compiled = _compile(data, _Locator(path, text), problems)
    if problems:
        raise InvalidInputs(problems)
    canonical = json.dumps(compiled, sort_keys=True, separators=(",", ":"))
    return SeccompProfile(path.stem, path, compiled, hashlib.sha256(canonical.encode()).hexdigest())


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


def _compile(data: Any, where: _Locator, problems: list[InvalidInput]) -> dict[str, Any]:
    if not isinstance(data, dict):
        problems.append(where.error("", "a seccomp profile is a JSON object with defaultAction and syscalls"))
        return {}
    for key in sorted(set(data) - TOP_KEYS):
        problems.append(where.error(key, f"unknown key {key!r} (known: {', '.join(sorted(TOP_KEYS))})", key))
    default = _action(data.get("defaultAction"), data.get("defaultErrnoRet"), "defaultAction", where, problems)
    for arch in data.get("architectures", []):
        if arch not in ARCHITECTURES:
            problems.append(where.error("architectures", f"architecture {arch!r} is not one lg guests run "
                                                         f"({', '.join(ARCHITECTURES)})", arch))
    rules = []
    for index, raw in enumerate(data.get("syscalls", [])):
        rule = _rule(raw, f"syscalls[{index}]", where, problems)
        if rule is not None:
            rules.append(rule)
    return {"default": default, "rules": rules}


def _action(name: Any, errno: Any, key: str, where: _Locator, problems: list[InvalidInput]) -> list[Any]:
    if name not in ACTIONS:
        problems.append(where.error(key, f"unknown action {name!r} (known: {', '.join(ACTIONS)})",
                                    name if isinstance(name, str) else None))
        return ["SCMP_ACT_KILL_PROCESS", 0]
    if errno is not None and (not isinstance(errno, int) or not 0 <= errno < 4096):
        problems.append(where.error(key, f"errnoRet {errno!r} must be an errno number (0 to 4095)"))
    return [name, errno if isinstance(errno, int) else EPERM if name == "SCMP_ACT_ERRNO" else 0]


def _rule(raw: Any, key: str, where: _Locator, problems: list[InvalidInput]) -> dict[str, Any] | None:
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
    for name in names:
        if syscall_number(name) is None:
            problems.append(where.error(f"{key}.names", f"unknown syscall {name!r} for x86_64", name))
    action = _action(raw.get("action"), raw.get("errnoRet"), f"{key}.action", where, problems)
    args = [_arg(arg, f"{key}.args[{position}]", where, problems) for position, arg in enumerate(raw.get("args", []))]
    return {"names": names, "action": action, "args": args}


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
    number: int = _libseccomp().seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None  # __NR_SCMP_ERROR is negative
