"""Seccomp and AppArmor profiles as container runtimes publish them (issue #20 item 10).

The test data is written here from the documented formats, not copied: the OCI runtime-spec seccomp fields plus
Docker's `archMap` and conditional `includes`/`excludes` (arches, caps, minKernel) as moby's
profiles/seccomp/default.json uses them, Podman's (containers/common pkg/seccomp/seccomp.json) `"args": null`
with empty `includes`/`excludes`, and the shape of Docker's generated AppArmor profile
(`profile "docker-default" flags=(attach_disconnected,mediate_deleted) { ... }`, moby profiles/apparmor/template.go).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.errors import InvalidInput
from lg.security.apparmor import load_apparmor
from lg.security.seccomp import Target, load_seccomp

DOCKER_STYLE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        # _llseek is i386's, arm_fadvise64_64 arm's; the last name is no syscall anywhere
        {"names": ["read", "write", "_llseek", "arm_fadvise64_64", "lg_no_such_call"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["sync_file_range2"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["ppc64le"]}},
        {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["unshare"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390x"]},
         "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ", "valueTwo": 0}]},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    ],
}

PODMAN_STYLE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
    "syscalls": [
        {"names": ["read", "exit_group"], "action": "SCMP_ACT_ALLOW", "args": None, "comment": "",
         "includes": {}, "excludes": {}},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 16, "valueTwo": 0,
                                                                   "op": "SCMP_CMP_NE"}],
         "comment": "", "includes": {}, "excludes": {}},
    ],
}

DOCKER_APPARMOR = """\
#include <tunables/global>

profile "docker-default" flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer="docker-default",

  deny @{PROC}/* w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,

  ptrace (trace,read,tracedby,readby) peer="docker-default",
}
"""


def write_json(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


def rule_names(profile: Any) -> dict[str, list[Any]]:
    return {name: rule["action"] for rule in profile.compiled["rules"] for name in rule["names"]}


def test_docker_s_conditional_rules_are_decided_for_the_guest(tmp_path: Path) -> None:
    profile = load_seccomp(write_json(tmp_path, "docker.json", DOCKER_STYLE))  # no caps, kernel unknown
    assert rule_names(profile) == {
        "read": ["SCMP_ACT_ALLOW", 0], "write": ["SCMP_ACT_ALLOW", 0], "personality": ["SCMP_ACT_ALLOW", 0],
        "arch_prctl": ["SCMP_ACT_ALLOW", 0], "unshare": ["SCMP_ACT_ALLOW", 0], "clone3": ["SCMP_ACT_ERRNO", 38]}
    ignored = "\n".join(profile.ignored)
    assert "_llseek: not an x86_64 syscall" in ignored and "arm_fadvise64_64: not an x86_64 syscall" in ignored
    assert "lg_no_such_call: unknown to this host's libseccomp" in ignored
    assert "SCMP_ARCH_AARCH64" in ignored and "SCMP_ARCH_X32" in ignored
    assert "(sync_file_range2): for ppc64le only" in ignored
    assert "(bpf): needs CAP_SYS_ADMIN, which the VM profile does not keep" in ignored
    assert "(ptrace): needs kernel >= 4.8, and the guest's is unknown here" in ignored  # fails closed


def test_kept_capabilities_and_the_image_s_kernel_decide_them_too(tmp_path: Path) -> None:
    path = write_json(tmp_path, "docker.json", DOCKER_STYLE)
    admin = load_seccomp(path, Target(frozenset({"CAP_SYS_ADMIN"})))
    names = rule_names(admin)
    assert "bpf" in names and "unshare" not in names and "clone3" not in names
    assert "ptrace" in rule_names_of(admin.for_kernel("6.1.0-28-cloud-amd64"))
    assert "ptrace" not in rule_names_of(admin.for_kernel("4.4.0-210-generic"))
    assert admin.for_kernel(None) == admin.compiled


def rule_names_of(compiled: dict[str, Any]) -> set[str]:
    return {name for rule in compiled["rules"] for name in rule["names"]}


def test_podman_s_null_args_and_empty_conditions_are_accepted(tmp_path: Path) -> None:
    profile = load_seccomp(write_json(tmp_path, "podman.json", PODMAN_STYLE))
    assert rule_names_of(profile.compiled) == {"read", "exit_group", "socket"}
    assert profile.compiled["default"] == ["SCMP_ACT_ERRNO", 38]


def test_an_unknown_name_in_a_rule_that_denies_under_a_default_that_allows_stays_an_error(tmp_path: Path) -> None:
    """Leaving that name out would leave the (misspelt) call allowed: fail closed."""
    path = write_json(tmp_path, "deny.json", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["kexec_load", "kexec_lod"], "action": "SCMP_ACT_ERRNO"}]})
    with pytest.raises(InvalidInput, match="unknown syscall 'kexec_lod' for x86_64, in a rule that denies it"):
        load_seccomp(path)


def test_bad_conditions_are_errors_with_their_key(tmp_path: Path) -> None:
    path = write_json(tmp_path, "bad.json", {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}},
        {"names": ["read"], "action": "SCMP_ACT_ALLOW", "excludes": {"kernels": ["x"]}}]})
    with pytest.raises(InvalidInput) as caught:
        load_seccomp(path)
    text = str(caught.value)
    assert "syscalls[0].includes.minKernel: minKernel 'new' is not a version" in text
    assert "syscalls[1].excludes: excludes has arches, caps and minKernel" in text


@pytest.mark.parametrize(("text", "name"), [
    (DOCKER_APPARMOR, "docker-default"),
    ("profile /usr/bin/foo {\n  /etc/** r,\n}\n", "/usr/bin/foo"),
    ("/usr/bin/foo flags=(complain) {\n  /etc/{passwd,group} r,\n}\n", "/usr/bin/foo"),
])
def test_apparmor_profiles_declared_as_apparmor_parser_reads_them_are_counted(tmp_path: Path, text: str,
                                                                             name: str) -> None:
    path = tmp_path / "profile"
    path.write_text(text)
    assert load_apparmor(path).name == name


def test_a_file_with_two_profiles_or_none_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "two"
    path.write_text('profile "a" {\n}\n# profile c {\nprofile /usr/bin/b {\n}\n')
    with pytest.raises(InvalidInput, match=r"found 2"):
        load_apparmor(path)


def test_lg_profile_check_takes_docker_s_profiles_and_says_what_it_left_out(
        tmp_path: Path, lg: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lg.yaml").write_text("state_dir: .lg\n")
    (tmp_path / "profiles" / "seccomp").mkdir(parents=True)
    write_json(tmp_path / "profiles" / "seccomp", "docker.json", DOCKER_STYLE)
    (tmp_path / "profiles" / "apparmor").mkdir(parents=True)
    (tmp_path / "profiles" / "apparmor" / "docker-default").write_text(DOCKER_APPARMOR)
    (tmp_path / "profiles" / "vm").mkdir(parents=True)
    (tmp_path / "profiles" / "vm" / "docker.yaml").write_text(textwrap.dedent("""\
        capabilities: {keep: [CAP_SYS_ADMIN]}
        seccomp: docker
        apparmor: docker-default
        """))
    monkeypatch.chdir(tmp_path)
    result = lg("profile", "check", "docker")
    assert result.code == 0, result.err
    assert "docker-default from docker-default" in result.out
    assert "seccomp ignored:    _llseek: not an x86_64 syscall" in result.out
    as_json = json.loads(lg("profile", "check", "--json", "docker").out)[0]
    assert any("(unshare): excluded for this guest" in line for line in as_json["seccomp_ignored"])
