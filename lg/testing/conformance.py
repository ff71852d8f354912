"""Backend conformance: drive any `Hypervisor` through the whole VM lifecycle, as pre-commit's
testing/language_helpers.py drives any language.

Every backend (QEMU; lg.testing.fake; Firecracker, Cloud Hypervisor, Apple Virtualization later) must pass
these. Two kinds of check: `VM_CHECKS` share one VM (each reads and writes only its own directories) and
`BACKEND_CHECKS` boot VMs of their own. A check that needs more than the contract every backend meets names
the `Capability` it needs; a backend declares the capabilities it has, and a check it lacks one for is reported
as skipped with the capability named, never left out silently. A backend's test module runs them all with:

    CAPABILITIES = conformance.ALL  # or what the backend has

    @pytest.mark.parametrize("check", conformance.vm_params(CAPABILITIES))
    def test_conformance(shared_vm: Vm, check: conformance.VmCheck, tmp_path: Path) -> None:
        check(shared_vm, tmp_path)

    @pytest.mark.parametrize("check", conformance.backend_params(CAPABILITIES))
    def test_backend_conformance(hypervisor: Hypervisor, spec: VmSpec, check: conformance.BackendCheck) -> None:
        check(hypervisor, spec)  # the spec with a run_dir of its own

See tests/vm/test_qemu.py and tests/testing/test_fake.py.
"""

from __future__ import annotations

import enum
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import psutil

from lg.vm.api import ExecRequest, Hypervisor, SnapshotBackend, Vm, VmSpec


class Capability(enum.Enum):
    """What some backends can be held to and others cannot."""

    GUEST_KERNEL = "its VMs run a kernel of their own (accelerator kvm or tcg, a kernel release, an uptime)"
    GUEST_PATHS = "commands see the guest's filesystem at / (absolute paths and pwd are the guest's)"
    CONFINEMENT = "uid, gid and confine of an ExecRequest are enforced by the guest kernel, and reported"
    VMM_PROCESS = "each VM is a process on the host that destroy() stops"
    SNAPSHOTS = "it saves a VM and restores independent clones of it (lg.vm.api.SnapshotBackend)"


ALL = frozenset(Capability)

VmCheck = Callable[[Vm, Path], None]
"""Runs in the shared VM; the Path is a host scratch directory of its own."""
BackendCheck = Callable[[Hypervisor, VmSpec], None]
"""Boots what it needs from the spec, whose run_dir is the check's own (to find what a VM leaves behind)."""
C = TypeVar("C", VmCheck, BackendCheck)


@dataclass(frozen=True)
class Case(Generic[C]):
    name: str
    check: C
    needs: frozenset[Capability] = frozenset()


def run(vm: Vm, script: str, **options: Any) -> tuple[int | None, bytes, bytes]:
    """Run a script; its exit code, stdout and stderr."""
    out, err = bytearray(), bytearray()

    def on_output(stream: str, chunk: bytes) -> None:
        (out if stream == "stdout" else err).extend(chunk)

    result = vm.exec(ExecRequest(script=script, **options), on_output)
    return result.exit_code, bytes(out), bytes(err)


# --- checks that share one VM ---------------------------------------------------------------------------


def check_identity(vm: Vm, scratch: Path) -> None:
    assert vm.id
    assert vm.boot_seconds > 0
    assert vm.agent_info.protocol >= 1


def check_guest_kernel(vm: Vm, scratch: Path) -> None:
    assert vm.accelerator in ("kvm", "hvf", "tcg")
    info = vm.agent_info
    assert info.kernel and info.uptime > 0


def check_exit_codes(vm: Vm, scratch: Path) -> None:
    # argv runs without a shell in between; /bin/sh is the one program every image has (the tiny image's
    # busybox has no applet links, so `true` alone is not on its PATH).
    assert vm.exec(ExecRequest(argv=("/bin/sh", "-c", "exit 0"))).exit_code == 0
    assert vm.exec(ExecRequest(argv=("sh", "-c", "exit 1"))).exit_code == 1
    assert vm.exec(ExecRequest(script="exit 42")).exit_code == 42
    killed = vm.exec(ExecRequest(script="kill -KILL $$"))
    assert (killed.exit_code, killed.signal, killed.timed_out) == (None, 9, False)
    missing = vm.exec(ExecRequest(argv=("/no/such/binary",)))
    assert missing.exit_code == 127


def check_output_streams(vm: Vm, scratch: Path) -> None:
    code, out, err = run(vm, "echo to-out; echo to-err >&2; printf 'no newline'")
    assert (code, out, err) == (0, b"to-out\nno newline", b"to-err\n")


def check_streaming_order(vm: Vm, scratch: Path) -> None:
    """Chunks arrive while the command runs, in order, before its exit status."""
    arrivals: list[tuple[float, bytes]] = []
    started = time.monotonic()
    result = vm.exec(
        ExecRequest(script="for i in 1 2 3; do echo line$i; sleep 0.7; done"),
        lambda _stream, chunk: arrivals.append((time.monotonic() - started, chunk)),
    )
    ended = time.monotonic() - started
    assert result.exit_code == 0
    assert b"".join(chunk for _, chunk in arrivals) == b"line1\nline2\nline3\n"
    assert arrivals[0][0] < ended - 1.0, "the first line only arrived at the end: output is not streamed"


def check_large_output(vm: Vm, scratch: Path) -> None:
    code, out, _ = run(vm, "seq 1 200000")
    assert code == 0 and out == b"".join(b"%d\n" % n for n in range(1, 200001))


def check_stdin(vm: Vm, scratch: Path) -> None:
    payload = os.urandom(300_000)
    code, out, _ = run(vm, "cat", stdin=payload)
    assert code == 0 and out == payload
    code, out, _ = run(vm, "wc -c", stdin=b"")
    assert code == 0 and out.strip() == b"0"


def check_env_and_cwd(vm: Vm, scratch: Path) -> None:
    """The command gets its env, runs in its cwd, and `mkdirs` made that first."""
    code, _, _ = run(vm, 'printf "%s" "$LG_VALUE" > seen.txt', env={"LG_VALUE": "a b 'c'"},
                     cwd="/tmp/env-check/deeper", mkdirs=("/tmp/env-check/deeper",))
    assert code == 0
    vm.get_paths("/tmp/env-check", ["deeper/seen.txt"], scratch)
    assert (scratch / "deeper" / "seen.txt").read_bytes() == b"a b 'c'"


def check_guest_paths(vm: Vm, scratch: Path) -> None:
    code, out, _ = run(vm, "mkdir -p /tmp/cwd-check && cd /tmp/cwd-check && echo ok")
    assert code == 0
    code, out, _ = run(vm, 'printf "%s|%s" "$LG_VALUE" "$(pwd)"', env={"LG_VALUE": "a b 'c'"}, cwd="/tmp/cwd-check")
    assert (code, out) == (0, b"a b 'c'|/tmp/cwd-check")


def check_timeout(vm: Vm, scratch: Path) -> None:
    """The command and everything it started are killed at its deadline."""
    started = time.monotonic()
    script = "sleep 600 & echo $! > timeout.pids; echo $$ >> timeout.pids; sleep 600"
    result = vm.exec(ExecRequest(script=script, timeout=1.0, cwd="/tmp/timeout-check",
                                 mkdirs=("/tmp/timeout-check",)))
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 15
    # Alive means a /proc entry that is not a zombie (reaping orphans is init's business, not the agent's).
    survivors = ('for p in $(cat timeout.pids); do read -r s < /proc/$p/stat 2>/dev/null || continue; '
                 'case "$s" in *") Z "*) ;; *) echo $p ;; esac; done; true')
    code, out, _ = run(vm, survivors, cwd="/tmp/timeout-check")
    assert code == 0 and out == b"", f"processes of the timed-out command survived: {out!r}"


def _tree(root: Path) -> None:
    (root / "dir" / "deeper").mkdir(parents=True)
    (root / "dir" / "deeper" / "text.txt").write_text("hello\n" * 1000)
    (root / "binary.bin").write_bytes(os.urandom(3 << 20))
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o755)
    (root / "link").symlink_to("dir/deeper/text.txt")
    (root / "ignored.log").write_text("skip me")


def _digests(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = "-> " + str(path.readlink())
        elif path.is_file():
            found[relative] = f"{path.stat().st_mode & 0o777:o} " + hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def check_put_get_round_trip(vm: Vm, scratch: Path) -> None:
    source, back = scratch / "source", scratch / "back"
    source.mkdir()
    _tree(source)
    stats = vm.put_tree(source, "/tmp/roundtrip", lambda rel: rel.endswith(".log"))
    assert stats.files == 4 and stats.bytes > 3 << 20
    names = ["dir", "binary.bin", "script.sh", "link"]
    back_stats = vm.get_paths("/tmp/roundtrip", names, back)
    assert back_stats.files == stats.files
    expected = {k: v for k, v in _digests(source).items() if not k.endswith(".log")}
    assert _digests(back) == expected


def check_changes(vm: Vm, scratch: Path) -> None:
    source = scratch / "source"
    source.mkdir()
    _tree(source)
    vm.put_tree(source, "/tmp/changes", None)
    assert vm.changes("/tmp/changes") == []
    code, _, _ = run(vm, "echo new > created.txt && rm binary.bin && echo more >> dir/deeper/text.txt "
                         "&& chmod 600 script.sh && ln -sf script.sh link", cwd="/tmp/changes")
    assert code == 0
    changes = {c.path: c for c in vm.changes("/tmp/changes")}
    assert {p: c.kind for p, c in changes.items()} == {
        "created.txt": "created", "binary.bin": "deleted", "dir/deeper/text.txt": "modified",
        "script.sh": "modified", "link": "modified",
    }
    created = changes["created.txt"]
    assert created.size == 4 and created.sha256 == hashlib.sha256(b"new\n").hexdigest()
    assert (changes["script.sh"].mode, changes["script.sh"].old_mode) == (0o600, 0o755)
    assert changes["link"].symlink_target == "script.sh"


def check_console(vm: Vm, scratch: Path) -> None:
    assert isinstance(vm.console_tail(5), str)
    assert len(vm.console_tail(5).splitlines()) <= 5


CONFINE = {"keep_caps": [], "no_new_privs": True}


def check_confinement_is_reported(vm: Vm, scratch: Path) -> None:
    """A request that asks for confinement always comes back saying what was enforced: what the guest kernel
    showed, or plainly that nothing was. One that asks for none reports none."""
    assert vm.exec(ExecRequest(script="exit 0")).confinement is None
    result = vm.exec(ExecRequest(script="exit 0", uid=1000, gid=1000, confine=CONFINE))
    assert result.ok and result.confinement is not None
    assert result.confinement.get("enforced") is False or "uid" in result.confinement, result.confinement


def check_confinement_is_enforced(vm: Vm, scratch: Path) -> None:
    # Builtins only (a read of the shell's own /proc status): the command ran as uid 1000, as the agent says.
    script = 'while read -r key value _; do [ "$key" = Uid: ] && echo "$value"; done < /proc/self/status; true'
    out = bytearray()
    result = vm.exec(ExecRequest(script=script, uid=1000, gid=1000, confine=CONFINE),
                     lambda _stream, chunk: out.extend(chunk))
    assert (result.exit_code, bytes(out)) == (0, b"1000\n")
    seen = result.confinement or {}
    assert (seen.get("uid"), seen.get("gid"), seen.get("no_new_privs")) == (1000, 1000, True), seen


VM_CHECKS: tuple[Case[VmCheck], ...] = (
    Case("identity", check_identity),
    Case("guest_kernel", check_guest_kernel, frozenset({Capability.GUEST_KERNEL})),
    Case("exit_codes", check_exit_codes),
    Case("output_streams", check_output_streams),
    Case("streaming_order", check_streaming_order),
    Case("large_output", check_large_output),
    Case("stdin", check_stdin),
    Case("env_and_cwd", check_env_and_cwd),
    Case("guest_paths", check_guest_paths, frozenset({Capability.GUEST_PATHS})),
    Case("put_get_round_trip", check_put_get_round_trip),
    Case("changes", check_changes),
    Case("console", check_console),
    Case("confinement_is_reported", check_confinement_is_reported),
    Case("confinement_is_enforced", check_confinement_is_enforced, frozenset({Capability.CONFINEMENT})),
    Case("timeout", check_timeout),
)


# --- checks that need their own VM --------------------------------------------------------------------


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _settled(before: set[int]) -> set[int]:
    """Processes started since `before` that are still there after up to 10 s."""
    deadline = time.monotonic() + 10
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    return _children() - before


def _run_dir(spec: VmSpec) -> Path:
    assert spec.run_dir is not None, "give the spec a run_dir of its own to check for leftovers"
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    return spec.run_dir


def check_destroy_leaves_nothing(hypervisor: Hypervisor, spec: VmSpec) -> None:
    """After destroy: no process it started, nothing left in the run directory parent; destroy is idempotent."""
    run_dir = _run_dir(spec)
    before_children, before_files = _children(), set(run_dir.iterdir())
    vm = hypervisor.boot(spec)
    assert set(run_dir.iterdir()) - before_files, "the VM has no run directory"
    vm.destroy()
    vm.destroy()
    assert not _settled(before_children), "a process outlived destroy()"
    assert set(run_dir.iterdir()) == before_files, "destroy() left files behind"


def check_destroy_stops_the_vmm(hypervisor: Hypervisor, spec: VmSpec) -> None:
    _run_dir(spec)
    before_children = _children()
    with hypervisor.boot(spec):
        assert _children() - before_children, "the backend started no process?"
    assert not _settled(before_children), "a VMM process outlived destroy()"


def check_context_manager_destroys_on_error(hypervisor: Hypervisor, spec: VmSpec) -> None:
    run_dir = _run_dir(spec)
    before_children, before_files = _children(), set(run_dir.iterdir())

    class Boom(Exception):
        pass

    try:
        with hypervisor.boot(spec) as vm:
            assert vm.exec(ExecRequest(script="true")).exit_code == 0
            raise Boom
    except Boom:
        pass
    assert not _settled(before_children)
    assert set(run_dir.iterdir()) == before_files


def check_snapshot_clones_are_independent(hypervisor: Hypervisor, spec: VmSpec) -> None:
    """Clones start with the saved VM's files, change their own only, and leave nothing when destroyed; the
    snapshot outlives its VM and is not changed by restoring it."""
    assert isinstance(hypervisor, SnapshotBackend), "a backend with snapshots is a lg.vm.api.SnapshotBackend"
    run_dir = _run_dir(spec)
    before_files = set(run_dir.iterdir())
    marker = {"cwd": "/tmp/snapshot-check", "mkdirs": ("/tmp/snapshot-check",)}
    snapshot = Path(tempfile.mkdtemp(prefix="lg-conformance-snapshot-", dir=run_dir.parent)) / "state"
    try:
        with hypervisor.boot(spec) as vm:
            assert run(vm, "echo before > marker", **marker)[0] == 0
            hypervisor.save_snapshot(vm, snapshot)
        with hypervisor.restore(snapshot, spec) as first, hypervisor.restore(snapshot, spec) as second:
            assert first.id != second.id and first.accelerator == vm.accelerator
            assert run(first, "cat marker", **marker)[1] == b"before\n"
            assert run(first, "echo first > marker", **marker)[0] == 0
            assert run(second, "cat marker", **marker)[1] == b"before\n"
        with hypervisor.restore(snapshot, spec) as third:
            assert run(third, "cat marker", **marker)[1] == b"before\n"
    finally:
        shutil.rmtree(snapshot.parent, ignore_errors=True)
    assert set(run_dir.iterdir()) == before_files


BACKEND_CHECKS: tuple[Case[BackendCheck], ...] = (
    Case("destroy_leaves_nothing", check_destroy_leaves_nothing),
    Case("destroy_stops_the_vmm", check_destroy_stops_the_vmm, frozenset({Capability.VMM_PROCESS})),
    Case("context_manager_destroys_on_error", check_context_manager_destroys_on_error),
    Case("snapshot_clones_are_independent", check_snapshot_clones_are_independent,
         frozenset({Capability.SNAPSHOTS})),
)


# --- running them ----------------------------------------------------------------------------------------


def missing(case: Case[Any], capabilities: Iterable[Capability]) -> frozenset[Capability]:
    return case.needs - frozenset(capabilities)


def params(cases: Iterable[Case[C]], capabilities: Iterable[Capability]) -> list[Any]:
    """pytest.param per check, its id its name; a check needing a capability the backend lacks is marked
    skip, with the capability named in the reason."""
    import pytest  # noqa: PLC0415 - only the tests that call this have it

    have = frozenset(capabilities)
    found = []
    for case in cases:
        lacking = sorted(capability.name for capability in missing(case, have))
        marks = [pytest.mark.skip(reason=f"the backend lacks {', '.join(lacking)}")] if lacking else []
        found.append(pytest.param(case.check, id=case.name, marks=marks))
    return found


def vm_params(capabilities: Iterable[Capability]) -> list[Any]:
    return params(VM_CHECKS, capabilities)


def backend_params(capabilities: Iterable[Capability]) -> list[Any]:
    return params(BACKEND_CHECKS, capabilities)
