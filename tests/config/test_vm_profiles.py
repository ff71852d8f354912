"""VM profiles: what they may say, and the clear exit-2 errors for what they may not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.security.profile import load_vm_profile_file


def test_the_default_profile_confines_fully() -> None:
    profile = load_vm_profile_file(Path(__file__).resolve().parents[2] / "profiles" / "vm" / "default.yaml")
    confinement = profile.confinement()
    seccomp = confinement.pop("seccomp")
    assert confinement.pop("apparmor")["name"] == "lg-default"
    assert confinement == {"keep_caps": [], "no_new_privs": True, "pids": 512, "memory_bytes": 448 << 20,
                           "cpu_percent": 100}
    assert seccomp["default"] == ["SCMP_ACT_ALLOW", 0]
    denied = {name for rule in seccomp["rules"] for name in rule["names"] if rule["action"][0] != "SCMP_ACT_ALLOW"}
    assert {"mount", "unshare", "setns", "init_module", "kexec_load", "bpf", "keyctl"} <= denied
    assert profile.relaxations() == []


def test_kept_capabilities_and_no_new_privileges_off_are_relaxations(write: Callable[[str, str], Path]) -> None:
    path = write("loose.yaml", "capabilities: {keep: [CAP_NET_RAW]}\nno_new_privileges: false\n"
                               "seccomp: unconfined\napparmor: unconfined\n")
    kinds = [(r.kind, r.detail) for r in load_vm_profile_file(path).relaxations()]
    assert kinds == [("capability", "CAP_NET_RAW"), ("no_new_privileges_off", ""), ("seccomp_off", ""),
                     ("apparmor_off", "")]


@pytest.mark.parametrize(("text", "message"), [
    ("capabilities: {keep: [CAP_SYS_GODMODE]}\n", "loose.yaml:1"),
    ("machine: {memory_mib: 512}\ncgroups: {memory_mib: 512}\n", "loose.yaml:2:23: cgroups.memory_mib: 512 MiB "
                                                                "leaves the guest nothing"),
    ("cgroups: {cpu_percent: 300}\n", "more than the 1 vCPU(s)"),
    ("network: {allow: [example.com]}\n", "loose.yaml:1"),
    ("seccomp: nosuch\n", "loose.yaml:1:10: seccomp: no seccomp profile named 'nosuch'"),
    ("apparmor: ./broken.aa\n", "broken.aa: apparmor_parser: AppArmor parser error for"),
    ("seccomp: ./bad.json\n", "bad.json:5: syscalls[0].names: unknown syscall 'frobnicate' for x86_64"),
    ("seccomp: ./bad.json\n", "bad.json:6: syscalls[0].action: unknown action 'SCMP_ACT_EXPLODE'"),
])
def test_bad_profiles_exit_2_naming_file_and_line(write: Callable[[str, str], Path], lg: Callable[..., Any],
                                                  text: str, message: str) -> None:
    write("bad.json", '{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": [\n    {\n      "names": ["mount", '
                      '"frobnicate"],\n      "action": "SCMP_ACT_EXPLODE"\n    }\n  ]\n}\n')
    write("broken.aa", "profile broken {\n  file,\n  bogus rule here,\n}\n")
    path = write("loose.yaml", text)
    result = lg("validate", path)
    assert result.code == 2 and message in result.err, result.err


def test_profile_check_reports_what_a_step_gets(lg: Callable[..., Any], write: Callable[[str, str], Path]) -> None:
    import json

    result = lg("profile", "check", "--json", "default", "strict")
    assert result.code == 0, result.err
    default, strict = json.loads(result.out)
    assert default["relaxations"] == "none" and strict["relaxations"] == "none"
    assert strict["seccomp"].startswith("strict (") and strict["cgroups"]["pids"] == 128
    write("broken.aa", "profile broken {\n  bogus,\n}\n")
    bad = write("bad.yaml", "apparmor: ./broken.aa\n")
    failed = lg("profile", "check", bad)
    assert failed.code == 2 and "broken.aa" in failed.err and "line 2" in failed.err
