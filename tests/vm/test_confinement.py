"""A step confined by the default VM profile tries to break out, in a real guest, and each attempt is denied.

Every denial is paired with the same attempt under a profile that allows it, so a test cannot pass because the
attempt was broken to begin with.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lg.security.profile import Limits, VmProfile, load_vm_profile_file
from lg.vm.api import ExecRequest, ExecResult, Vm

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
DEFAULT = load_vm_profile_file(REPO / "profiles" / "vm" / "default.yaml")


def run(vm: Vm, script: str, profile: VmProfile | None = DEFAULT, uid: int = 1000) -> tuple[ExecResult, str]:
    output: list[bytes] = []
    result = vm.exec(
        ExecRequest(script=script, uid=uid, gid=uid, timeout=120,
                    confine=profile.confinement() if profile is not None else None),
        on_output=lambda stream, chunk: output.append(chunk),
    )
    return result, b"".join(output).decode(errors="replace")


def test_the_kernel_shows_the_default_confinement(shared_vm: Vm) -> None:
    result, _ = run(shared_vm, "true")
    seen = result.confinement or {}
    assert (seen["uid"], seen["gid"], seen["bounding_caps"], seen["capeff"], seen["no_new_privs"]) == (
        1000, 1000, [], "0000000000000000", True)
    assert seen["cgroup"].startswith("/lg/cmd-")


def test_dropped_capabilities_deny_mount_chown_and_raw_sockets_even_to_root(shared_vm: Vm) -> None:
    attempts = ("mkdir -p /mnt/x && mount -t tmpfs none /mnt/x && echo MOUNTED; umount /mnt/x 2>/dev/null;"
                " chown 1000 /run && echo CHOWNED;"
                " python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 1); print(\"RAW\")'"
                " 2>&1 || true")
    _, denied = run(shared_vm, attempts, uid=0)
    assert "MOUNTED" not in denied and "CHOWNED" not in denied and "RAW" not in denied
    assert "mount: permission denied" in denied and denied.count("Operation not permitted") == 2
    allowed_profile = replace(DEFAULT, keep_capabilities=("CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_NET_RAW"),
                              seccomp=None, apparmor=None)  # the filter and AppArmor refuse mount(2) on their own
    _, allowed = run(shared_vm, attempts, allowed_profile, uid=0)
    assert "MOUNTED" in allowed and "CHOWNED" in allowed and "RAW" in allowed


def test_no_new_privs_stops_a_setuid_binary(shared_vm: Vm) -> None:
    prepared, _ = run(shared_vm, "cp /usr/bin/python3.11 /tmp/suid-python && chmod 4755 /tmp/suid-python",
                      profile=None, uid=0)
    assert prepared.ok
    probe = "/tmp/suid-python -c 'import os; print(\"euid\", os.geteuid())'"
    _, confined = run(shared_vm, probe)
    assert "euid 1000" in confined
    _, unconfined = run(shared_vm, probe, replace(DEFAULT, no_new_privileges=False))
    assert "euid 0" in unconfined  # the setuid bit works when no_new_privs is off: the probe is real


def test_a_fork_bomb_stops_at_the_pids_limit(shared_vm: Vm) -> None:
    bomb = "i=0; while [ $i -lt 2000 ]; do sleep 60 & i=$((i+1)); done; echo ALL-FORKED"
    result, output = run(shared_vm, bomb, replace(DEFAULT, limits=Limits(pids=64, memory_mib=448, cpu_percent=100)))
    assert not result.ok and "ALL-FORKED" not in output and "can't fork" in output
    assert (result.confinement or {})["limits_hit"]["forks_refused"] >= 1
    after, _ = run(shared_vm, "ls /proc | grep -c '^[0-9]' ; true")
    assert after.ok  # the background sleepers were killed with the command's cgroup; the guest goes on


def test_a_memory_hog_is_oom_killed_inside_the_guest(shared_vm: Vm) -> None:
    hog = "python3 -c 'x = bytearray(48 << 20); print(\"ALLOCATED\")'"
    small = replace(DEFAULT, limits=Limits(pids=512, memory_mib=24, cpu_percent=100))
    result, output = run(shared_vm, hog, small)
    assert result.signal == 9 and "ALLOCATED" not in output
    assert (result.confinement or {})["limits_hit"]["oom_kills"] >= 1
    fine, output = run(shared_vm, hog)  # the same allocation under the default limit works: the guest is fine
    assert fine.ok and "ALLOCATED" in output


UNSHARE = ("python3 -c 'import ctypes, os; libc = ctypes.CDLL(None, use_errno=True);"
           " ok = libc.unshare(0x10000000) == 0; print(\"USERNS\" if ok else os.strerror(ctypes.get_errno()))'")


def test_the_seccomp_filter_refuses_user_namespaces_with_eperm(shared_vm: Vm) -> None:
    result, denied = run(shared_vm, UNSHARE)
    assert (result.confinement or {})["seccomp_mode"] == 2
    assert "Operation not permitted" in denied and "USERNS" not in denied
    _, allowed = run(shared_vm, UNSHARE, replace(DEFAULT, seccomp=None))
    assert "USERNS" in allowed  # without the filter the kernel lets an unprivileged user make one


def test_the_strict_filter_kills_a_process_loading_a_module(shared_vm: Vm) -> None:
    from lg.security.seccomp import load_seccomp

    strict = replace(DEFAULT, seccomp=load_seccomp(REPO / "profiles" / "seccomp" / "strict.json"))
    load = "python3 -c 'import ctypes; ctypes.CDLL(None).syscall(313, -1, b\"\", 0); print(\"ALIVE\")'"
    result, output = run(shared_vm, load, strict, uid=0)
    assert result.signal == 31 and "ALIVE" not in output  # SIGSYS: killed by the filter, not refused
    result, output = run(shared_vm, load, uid=0)
    assert result.ok and "ALIVE" in output  # the default filter refuses it (EPERM) and the process goes on


def test_apparmor_denies_the_guest_s_system_files_with_eacces_even_to_root(shared_vm: Vm) -> None:
    attempt = ("cat /proc/self/attr/current; echo x > /etc/lg-probe && echo WROTE;"
               " head -c1 /proc/kcore >/dev/null && echo READ")
    result, denied = run(shared_vm, attempt, uid=0)
    assert (result.confinement or {})["apparmor"] == "lg-default (enforce)"
    assert "lg-default (enforce)" in denied and "WROTE" not in denied and "READ" not in denied
    assert denied.count("Permission denied") == 2  # EACCES, not EPERM: AppArmor said no, not a capability
    _, allowed = run(shared_vm, attempt, replace(DEFAULT, apparmor=None, keep_capabilities=("CAP_SYS_RAWIO",)),
                     uid=0)
    assert "unconfined" in allowed and "WROTE" in allowed


def test_there_is_no_network(shared_vm: Vm) -> None:
    _, output = run(shared_vm, "ls /sys/class/net; python3 -c 'import socket; socket.create_connection("
                                "(\"10.0.2.2\", 80), timeout=3)' 2>&1 | tail -1")
    assert output.split()[0] == "lo" and "Network is unreachable" in output


def test_the_vmm_is_confined_on_the_host(hypervisor: Any, spec: Any) -> None:
    """QEMU runs in cgroups of its own with memory and pids limits, chrooted to its private run directory;
    the cgroups go away with it."""
    with hypervisor.boot(spec) as vm:
        applied = vm.host_confinement
        paths = [Path(p) for p in applied["cgroups"]]
        for path in paths:
            assert (path / "cgroup.procs").read_text().split() == [str(vm.pid)]
        limit_file = "memory.max" if applied["layout"] == "v2" else "memory.limit_in_bytes"
        memory_dir = next(p for p in paths if (p / limit_file).exists())
        assert int((memory_dir / limit_file).read_text()) == (spec.memory_mib + 1024) << 20
        assert Path(f"/proc/{vm.pid}/root").readlink() == vm.run_dir
    assert not [p for p in paths if p.exists()]


def test_read_only_paths_and_tmpfs_hold_even_for_root(shared_vm: Vm) -> None:
    prepared, _ = run(shared_vm, "mkdir -p /srv/data && echo original > /srv/data/f", profile=None, uid=0)
    assert prepared.ok
    attempt = ("echo changed > /srv/data/f 2>&1 || echo REFUSED; cat /srv/data/f;"
               " echo scratch > /scratch/x && echo TMPFS-OK; mount -o remount,rw /srv/data 2>&1 || echo NO-REMOUNT")
    mounts = replace(DEFAULT, read_only_paths=("/srv/data",), tmpfs=("/scratch",))
    result, output = run(shared_vm, attempt, mounts, uid=0)
    assert "Read-only file system" in output and "original" in output and "changed" not in output.split("REFUSED")[1]
    assert "TMPFS-OK" in output and "NO-REMOUNT" in output
    seen_mounts = (result.confinement or {})["mounts"]
    assert seen_mounts["/scratch"] == "tmpfs rw" and seen_mounts["/srv/data"].endswith(" ro")
    _, seen = run(shared_vm, "cat /srv/data/f; ls /scratch/x 2>&1 || echo GONE", profile=None, uid=0)
    assert "original" in seen and "GONE" in seen  # the mounts were the command's own: nothing else sees them


def test_a_confined_command_that_cannot_start_is_reported_and_nothing_runs(shared_vm: Vm) -> None:
    """The confinement helper's own failures: a command that does not exist (127, as a shell says), and a
    setup step the kernel refuses (126, naming it): the command never runs unconfined instead."""
    def attempt(argv: tuple[str, ...], profile: VmProfile) -> tuple[ExecResult, str]:
        output: list[bytes] = []
        result = shared_vm.exec(ExecRequest(argv=argv, uid=1000, gid=1000, timeout=60, confine=profile.confinement()),
                                on_output=lambda stream, chunk: output.append(chunk))
        return result, b"".join(output).decode(errors="replace")

    missing, said = attempt(("/no/such/tool",), DEFAULT)
    assert missing.exit_code == 127 and "/no/such/tool: No such file or directory" in said
    marker = "/tmp/ran-unconfined"
    bad_mount = replace(DEFAULT, read_only_paths=("/no/such/dir",))  # a bind mount of nothing fails
    refused, said = attempt(("/bin/sh", "-c", f"touch {marker}"), bad_mount)
    assert refused.exit_code == 126 and "/no/such/dir: No such file or directory" in said
    check, listing = run(shared_vm, f"ls {marker} 2>&1 || true", profile=None, uid=0)
    assert check.ok and "No such file" in listing
