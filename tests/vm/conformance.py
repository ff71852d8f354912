"""Backend conformance: drive any `Hypervisor` through the whole VM lifecycle.

Every backend (QEMU today; Firecracker, Cloud Hypervisor, Apple Virtualization later) must pass these. A
backend's test module provides a `Hypervisor` and an image, then runs `SHARED_CHECKS` against one VM (they
only read or write their own directories) and `check_destroy_leaves_nothing` / `check_context_manager`
against VMs of their own. See tests/vm/test_qemu.py for the wiring.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from lg.vm.api import ExecRequest, Hypervisor, Vm, VmSpec

Check = Callable[[Vm, Path], None]


def run(vm: Vm, script: str, **options: object) -> tuple[int | None, bytes, bytes]:
    out, err = bytearray(), bytearray()

    def on_output(stream: str, chunk: bytes) -> None:
        (out if stream == "stdout" else err).extend(chunk)

    result = vm.exec(ExecRequest(script=script, **options), on_output)  # type: ignore[arg-type]
    return result.exit_code, bytes(out), bytes(err)


# --- checks that share one VM ---------------------------------------------------------------------------


def check_identity(vm: Vm, scratch: Path) -> None:
    assert vm.id
    assert vm.accelerator in ("kvm", "tcg")
    assert vm.boot_seconds > 0
    info = vm.agent_info
    assert info.protocol >= 1 and info.kernel and info.uptime > 0


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
    code, out, _ = run(vm, 'mkdir -p /tmp/cwd-check && cd /tmp/cwd-check && echo ok')
    assert code == 0
    code, out, _ = run(vm, 'printf "%s|%s" "$LG_VALUE" "$(pwd)"', env={"LG_VALUE": "a b 'c'"}, cwd="/tmp/cwd-check")
    assert (code, out) == (0, b"a b 'c'|/tmp/cwd-check")


def check_timeout(vm: Vm, scratch: Path) -> None:
    started = time.monotonic()
    script = "sleep 600 & echo $! > /tmp/timeout.pids; echo $$ >> /tmp/timeout.pids; sleep 600"
    result = vm.exec(ExecRequest(script=script, timeout=1.0))
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 15
    # Alive means a /proc entry that is not a zombie (reaping orphans is init's business, not the agent's).
    survivors = ('for p in $(cat /tmp/timeout.pids); do read -r s < /proc/$p/stat 2>/dev/null || continue; '
                 'case "$s" in *") Z "*) ;; *) echo $p ;; esac; done; true')
    code, out, _ = run(vm, survivors)
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


SHARED_CHECKS: tuple[Check, ...] = (
    check_identity, check_exit_codes, check_output_streams, check_streaming_order, check_large_output,
    check_stdin, check_env_and_cwd, check_put_get_round_trip, check_changes, check_console, check_timeout,
)


# --- checks that need their own VM --------------------------------------------------------------------


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def check_destroy_leaves_nothing(hypervisor: Hypervisor, spec: VmSpec) -> None:
    """After destroy: no new process, nothing left in the run directory parent; destroy is idempotent."""
    assert spec.run_dir is not None, "give the spec a run_dir of its own to check for leftovers"
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    before_children, before_files = _children(), set(spec.run_dir.iterdir())
    vm = hypervisor.boot(spec)
    assert _children() - before_children, "the backend started no process?"
    assert set(spec.run_dir.iterdir()) - before_files, "the VM has no run directory"
    vm.destroy()
    vm.destroy()
    deadline = time.monotonic() + 10
    while _children() - before_children and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (_children() - before_children), "a VMM process outlived destroy()"
    assert set(spec.run_dir.iterdir()) == before_files, "destroy() left files behind"


def check_context_manager_destroys_on_error(hypervisor: Hypervisor, spec: VmSpec) -> None:
    assert spec.run_dir is not None
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    before_children, before_files = _children(), set(spec.run_dir.iterdir())

    class Boom(Exception):
        pass

    try:
        with hypervisor.boot(spec) as vm:
            assert vm.exec(ExecRequest(script="true")).exit_code == 0
            raise Boom
    except Boom:
        pass
    assert not (_children() - before_children)
    assert set(spec.run_dir.iterdir()) == before_files
