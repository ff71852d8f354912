"""VM profiles: what they may say, and the clear exit-2 errors for what they may not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.errors import InvalidInput
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


@pytest.mark.parametrize(("text", "message"), [
    ("network:\n  allow:\n    - cidr: 10.0.0.0/33\n", "loose.yaml:3:13: network.allow[0].cidr: '10.0.0.0/33' is not an "
                                                        "IPv4 network"),
    ("network:\n  allow:\n    - host: fd00::1\n", "loose.yaml:3:13: network.allow[0].host: 'fd00::1' is IPv6"),
    ("network:\n  allow:\n    - host: 'bad host!'\n", "neither a host name nor an IPv4 address"),
    ("network:\n  allow:\n    - host: a.example\n      protocol: any\n      ports: [80]\n",
     "loose.yaml:4:17: network.allow[0].protocol: ports need a protocol"),
    ("network:\n  allow:\n    - host: a.example\n      ports: [70000]\n", "loose.yaml:4"),
    ("read_only_paths: [/proc/sys]\n", "loose.yaml:1:19: read_only_paths[0]: '/proc/sys': the guest's root and "
                                       "kernel filesystems"),
    ("cgroups: {io: {write_bps: 10}}\n", "loose.yaml:1"),
    ("selinux: {label: 'not a label'}\n", "loose.yaml:1"),
])
def test_bad_network_mounts_io_and_selinux_exit_2(write: Callable[[str, str], Path], lg: Callable[..., Any],
                                                  text: str, message: str) -> None:
    result = lg("validate", write("loose.yaml", text))
    assert result.code == 2 and message in result.err, result.err


def test_an_allow_list_is_a_relaxation_per_entry_and_names_resolve_when_the_vm_starts(
        write: Callable[[str, str], Path]) -> None:
    from lg.errors import EnvironmentUnfit

    profile = load_vm_profile_file(write("net.yaml", "network:\n  allow:\n    - host: pkg.example\n      ports: [443]\n"
                                                     "    - cidr: 192.0.2.0/24\n      protocol: udp\n"))
    assert [(r.kind, r.detail) for r in profile.relaxations()] == [("network", "pkg.example:443"),
                                                                   ("network", "192.0.2.0/24 (udp)")]
    assert profile.network is not None
    spec = profile.network.to_spec(lambda name: ["198.51.100.7", "198.51.100.8"])
    assert [(r.network, r.protocol, r.ports) for r in spec.allow] == [
        ("198.51.100.7/32", "tcp", (443,)), ("198.51.100.8/32", "tcp", (443,)), ("192.0.2.0/24", "udp", ())]
    assert spec.hosts == (("pkg.example", "198.51.100.7"), ("pkg.example", "198.51.100.8"))
    with pytest.raises(EnvironmentUnfit, match=r"net.yaml:3:13: network.allow\[0\].host.*does not resolve"):
        profile.network.to_spec(lambda name: [])  # fail closed: never run with a hole in the list


def test_the_nftables_ruleset_says_exactly_the_allow_list() -> None:
    from lg.vm.api import EgressRule, NetworkSpec
    from lg.vm.network import namespace_ruleset

    ruleset = namespace_ruleset(NetworkSpec((EgressRule("192.0.2.7/32", "tcp", (443, 80)),
                                             EgressRule("198.51.100.0/24", "any"))))
    accepts = [line.strip() for line in ruleset.splitlines() if line.strip().endswith("accept")]
    assert accepts == ["ct state established,related accept",
                       'iifname "tap0" oifname "up0" ip daddr 192.0.2.7/32 meta l4proto tcp tcp dport { 443, 80 } '
                       "accept",
                       'iifname "tap0" oifname "up0" ip daddr 198.51.100.0/24 accept',
                       'iifname "lo" accept', "ct state established,related accept"]
    assert "policy drop;" in ruleset and "meta nfproto ipv6 drop" in ruleset


def test_selinux_is_refused_unless_optional_and_then_said_not_enforced(write: Callable[[str, str], Path]) -> None:
    from lg.errors import EnvironmentUnfit
    from lg.security.enforce import plan_for

    asked = load_vm_profile_file(write("se.yaml", "selinux: {label: 'system_u:system_r:container_t:s0'}\n"))
    with pytest.raises(EnvironmentUnfit, match="cannot be enforced"):
        plan_for(asked)
    optional = load_vm_profile_file(write("se2.yaml", "selinux: {label: 'system_u:system_r:container_t:s0'}\n"
                                                      "optional: [selinux]\n"))
    assert plan_for(optional).selinux.startswith("not enforced (no policy in image)")


def test_an_apparmor_text_the_parser_accepted_is_not_parsed_again_and_a_broken_one_always_is(
        write: Callable[[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from lg.security import apparmor

    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    runs: list[list[str]] = []
    real = subprocess.run

    def counted(argv: list[str], **options: Any) -> Any:
        runs.append(argv)
        return real(argv, **options)

    monkeypatch.setattr(apparmor.subprocess, "run", counted)
    good = "profile lg-verdict-test {\n  file,\n}\n"
    for name in ("one.aa", "two.aa"):
        apparmor.load_apparmor(write(name, good))
    assert len(runs) == 1  # the same text, accepted once, is not parsed again
    for name in ("bad1.aa", "bad2.aa"):
        with pytest.raises(InvalidInput, match="apparmor_parser"):
            apparmor.load_apparmor(write(name, "profile lg-verdict-test {\n  nonsense here\n}\n"))
    assert len(runs) == 3
