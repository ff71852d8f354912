"""VM profiles: what they may say, and the clear exit-2 errors for what they may not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.security.profile import load_vm_profile_file


def test_the_default_profile_confines_fully() -> None:
    profile = load_vm_profile_file(Path(__file__).resolve().parents[2] / "profiles" / "vm" / "default.yaml")
    assert profile.confinement() == {"keep_caps": [], "no_new_privs": True, "pids": 512,
                                     "memory_bytes": 448 << 20, "cpu_percent": 100}
    assert profile.relaxations() == []


def test_kept_capabilities_and_no_new_privileges_off_are_relaxations(write: Callable[[str, str], Path]) -> None:
    path = write("loose.yaml", "capabilities: {keep: [CAP_NET_RAW]}\nno_new_privileges: false\n")
    kinds = [(r.kind, r.detail) for r in load_vm_profile_file(path).relaxations()]
    assert kinds == [("capability", "CAP_NET_RAW"), ("no_new_privileges_off", "")]


@pytest.mark.parametrize(("text", "message"), [
    ("capabilities: {keep: [CAP_SYS_GODMODE]}\n", "loose.yaml:1"),
    ("machine: {memory_mib: 512}\ncgroups: {memory_mib: 512}\n", "loose.yaml:2:23: cgroups.memory_mib: 512 MiB "
                                                                "leaves the guest nothing"),
    ("cgroups: {cpu_percent: 300}\n", "more than the 1 vCPU(s)"),
    ("network: {allow: [example.com]}\n", "loose.yaml:1"),
    ("seccomp: default\n", "loose.yaml:1"),
])
def test_bad_profiles_exit_2_naming_file_and_line(write: Callable[[str, str], Path], lg: Callable[..., Any],
                                                  text: str, message: str) -> None:
    path = write("loose.yaml", text)
    result = lg("validate", path)
    assert result.code == 2 and message in result.err, result.err
