"""`lg run` end to end: real pipelines, each step in a real microVM (tiny image, TCG on these machines)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from lg.runs.store import RunStore

pytestmark = pytest.mark.vm


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_image_ready: None) -> Path:
    """A workspace with its own lg.yaml (tiny image, default policy), state kept inside the temp dir."""
    (tmp_path / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\n")
    (tmp_path / "keep.txt").write_text("original\n")
    (tmp_path / "remove-me.txt").write_text("bye\n")
    (tmp_path / ".lgignore").write_text("secret-local.txt\n")
    (tmp_path / "secret-local.txt").write_text("never copied in\n")
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # `lg status/logs` find the project's lg.yaml from here, as a user's shell would
    return tmp_path


def pipeline(project: Path, body: str) -> Path:
    path = project / "pipeline.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and ".lg" not in p.relative_to(directory).parts
    }


def records(project: Path) -> tuple[Any, list[Any]]:
    store = RunStore(project / ".lg")
    run = store.runs(1)[0]
    return run, store.steps(run.id)


def test_changes_outputs_and_ignores(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: e2e
        steps:
          - id: make
            run: |
              test ! -e secret-local.txt
              echo changed > keep.txt
              mkdir -p out && printf 'artifact' > out/a.bin && chmod 600 out/a.bin
              rm remove-me.txt
              echo "answer=42" >> "$LG_OUTPUT"
            outputs: [answer]
            artifacts: [out/a.bin]
          - id: use
            needs: make
            run: |
              test "$(cat keep.txt)" = changed
              echo "the answer is {{ steps.make.outputs.answer }}"
        """)
    result = lg("run", path)
    assert result.code == 0, result.out + result.err
    assert "[use] the answer is 42" in result.out
    assert (project / "keep.txt").read_text() == "changed\n"
    assert (project / "out/a.bin").read_bytes() == b"artifact"
    assert (project / "out/a.bin").stat().st_mode & 0o777 == 0o600
    assert not (project / "remove-me.txt").exists()
    run, steps = records(project)
    assert run.status == "succeeded"
    assert [s.status for s in steps] == ["succeeded", "succeeded"]
    assert steps[0].outputs == {"answer": "42"} and steps[0].accelerator in ("kvm", "tcg")
    security = steps[0].security or {}
    assert (security["capabilities"], security["no_new_privs"], security["user"]) == (
        [], True, "lg (uid 1000, gid 1000)")
    assert security["cgroup"]["pids_max"] == 512 and security["apparmor"] == "lg-default (enforce): enforced"
    assert security["seccomp"].startswith("default (sha256 ") and security["seccomp"].endswith(": filter enforced")
    assert security["vmm"]["memory_max_mib"] == 512 + 1024 and security["vmm"]["layout"] in ("v1", "v2")
    assert "security: user lg (uid 1000, gid 1000); caps none; no_new_privs True" in lg("status", run.id).out
    assert {c["path"]: c["kind"] for c in steps[0].changes} == {
        "keep.txt": "modified", "out/a.bin": "created", "remove-me.txt": "deleted"}
    artifact = project / ".lg" / "runs" / run.id / "artifacts" / "make" / "out" / "a.bin"
    assert artifact.read_bytes() == b"artifact"
    assert RunStore(project / ".lg").audit_log.verify() == []


def test_a_failed_step_changes_nothing(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: fails
        steps:
          - id: break
            retries: 1
            run: |
              echo mangled > keep.txt
              touch new-file.txt
              exit 3
          - id: after
            needs: break
            run: echo never
        """)
    before = snapshot(project)
    result = lg("run", path)
    assert result.code == 1
    assert snapshot(project) == before
    run, (broken, after) = records(project)
    assert run.status == "failed"
    assert (broken.status, broken.exit_code, broken.attempts) == ("failed", 3, 2)
    assert after.status == "skipped"


def test_timeout_kills_the_step(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: slow
        steps:
          - id: sleepy
            timeout: 3s
            run: |
              echo started > keep.txt
              sleep 60
        """)
    before = snapshot(project)
    started = time.monotonic()
    result = lg("run", path)
    assert result.code == 1
    assert time.monotonic() - started < 45  # the boot dominates; the 60 s sleep did not run out
    assert snapshot(project) == before
    _, (step,) = records(project)
    assert step.status == "timed_out"


def test_secrets_are_masked(lg: Callable[..., Any], project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOY_TOKEN", "tok-8c1f-very-secret")
    path = pipeline(project, """\
        name: secrets
        secrets: [DEPLOY_TOKEN]
        steps:
          - id: leak
            run: echo "token is $DEPLOY_TOKEN"
        """)
    result = lg("run", path)
    assert result.code == 0, result.err
    assert "tok-8c1f-very-secret" not in result.out
    assert "[leak] token is ***" in result.out
    run, (step,) = records(project)
    assert "tok-8c1f" not in Path(step.log_path).read_text()
    assert lg("logs", "--json", run.id).out.count("***") == 1


def test_ctrl_c_destroys_the_vm_and_applies_nothing(project: Path) -> None:
    path = pipeline(project, """\
        name: interrupted
        steps:
          - id: long
            run: |
              echo touched > keep.txt
              echo step-is-running
              sleep 120
        """)
    before = snapshot(project)
    process = subprocess.Popen(
        [sys.executable, "-m", "lg.cli.main", "run", str(path)], cwd=project,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "step-is-running" in line:
            break
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    psutil.wait_procs(children, timeout=15)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert snapshot(project) == before
    run, (step,) = records(project)
    assert (run.status, step.status) == ("interrupted", "interrupted")
    assert not list((project / ".lg").glob("vms/*"))


def test_held_effects_are_shown_then_applied_byte_for_byte_or_discarded(lg: Callable[..., Any],
                                                                        project: Path) -> None:
    """An effects gate: the step ran, its effects wait in the state directory; approved, exactly what was shown
    lands (text, binary, an executable); rejected, the host workspace is untouched."""
    path = pipeline(project, """\
        name: risky-effects
        steps:
          - id: ci
            run: |
              mkdir -p .github/workflows
              echo "on: push" > .github/workflows/ci.yml
              echo changed > keep.txt
              printf 'bin\\000\\001\\377data' > blob.bin
              printf '#!/bin/sh\\necho hi\\n' > tool.sh && chmod 755 tool.sh
              rm remove-me.txt
          - id: after
            needs: ci
            run: echo after > after.txt
        """)
    before = snapshot(project)
    first = lg("run", path)  # writing a CI config shows in the command too: a gate before the step runs
    assert first.code == 3 and "waiting for approval at gate ci.before" in first.err, first.out + first.err
    assert lg("approve", records(project)[0].id, "ci.before").code == 0
    result = lg("resume", records(project)[0].id)
    assert result.code == 3, result.out + result.err
    assert "waiting for approval at gate ci.effects" in result.err and "lg resume" in result.err
    assert "+on: push" in result.out  # the diff card, printed where the run paused
    assert snapshot(project) == before
    run, (step, after) = records(project)
    assert (run.status, step.status, after.status) == ("awaiting_approval", "held", "pending")
    shown = json.loads(lg("show", "--json", run.id, "ci.effects").out)
    changes = {c["path"]: c for c in shown["card"]["changes"]}
    assert {p: c["change"] for p, c in changes.items()} == {
        ".github/workflows/ci.yml": "create", "blob.bin": "create", "keep.txt": "modify",
        "remove-me.txt": "delete", "tool.sh": "create"}
    assert "-original\n+changed\n" in changes["keep.txt"]["diff"] and changes["blob.bin"]["diff"] is None
    assert shown["level"] == "orange" and shown["card"]["rules"][0]["rule"] == "effects.ci_config"

    assert lg("approve", run.id, "ci.effects", "--digest", shown["digest"][:16]).code == 0
    resumed = lg("resume", run.id)
    assert resumed.code == 0, resumed.out + resumed.err
    assert (project / "blob.bin").read_bytes() == b"bin\x00\x01\xffdata"
    assert (project / "tool.sh").stat().st_mode & 0o777 == 0o755
    assert (project / "after.txt").read_text() == "after\n" and not (project / "remove-me.txt").exists()
    for change in shown["card"]["changes"]:
        if change["sha256"] and change["change"] != "delete":
            assert hashlib.sha256((project / change["path"]).read_bytes()).hexdigest() == change["sha256"]
    assert not (project / ".lg" / "runs" / run.id / "effects" / "ci").exists()

    path = pipeline(project, "name: evil\nsteps:\n  - {id: hook, run: echo on-pr > .github/workflows/x.yml}\n")
    before = snapshot(project)
    assert lg("run", path).code == 3
    run, _ = records(project)
    assert lg("reject", run.id, "--reason", "adds a workflow").code == 0
    rejected = lg("resume", run.id)
    assert rejected.code == 4 and "was rejected" in rejected.err
    assert snapshot(project) == before
    run, (step,) = records(project)
    assert (run.status, step.status) == ("rejected", "rejected") and step.accelerator is None  # it never ran
    kinds = [record.kind for record in RunStore(project / ".lg").audit_log.records()]
    assert kinds.count("effects.applied") == 2 and "gate.rejected" in kinds
    assert lg("audit", "verify").code == 0


def test_killed_mid_step_and_at_a_gate_resume_finishes_the_run(lg: Callable[..., Any], project: Path) -> None:
    """kill -9 of lg while a step runs, then again while it waits at a gate: `lg resume` from another process
    finishes the run; nothing is applied twice, no audit record is lost, no VM is left running."""
    path = pipeline(project, """\
        name: survives
        steps:
          - id: count
            run: |
              n=$(cat count.txt 2>/dev/null || echo 0)
              echo $((n + 1)) > count.txt
              echo counting
              sleep 4
          - id: ship
            needs: count
            approve: {reason: ships the build}
            run: echo shipped > shipped.txt
        """)
    store = RunStore(project / ".lg")
    first = _lg_process("run", "--wait", path, cwd=project)
    _wait_for(lambda: _step_status(store, "count") == "running" and _log_has(store, "count", "counting"))
    _kill_9_leaves_no_vm(first)
    run = store.runs(1)[0]
    assert run.abandoned and not (project / "count.txt").exists()

    second = _lg_process("resume", "--wait", run.id, cwd=project)
    _wait_for(lambda: _step_status(store, "ship") == "awaiting_approval")
    _kill_9_leaves_no_vm(second)
    assert (project / "count.txt").read_text() == "1\n"

    assert lg("approve", run.id, "ship.before").code == 0
    finished = lg("resume", run.id)
    assert finished.code == 0, finished.out + finished.err
    assert (project / "count.txt").read_text() == "1\n" and (project / "shipped.txt").read_text() == "shipped\n"
    kinds = [record.kind for record in store.audit_log.records()]
    assert kinds.count("run.resumed") == 2 and kinds.count("effects.applied") == 2
    assert kinds.count("gate.approved") == 1 and kinds[-1] == "run.finished"
    assert store.audit_log.verify() == [] and store.run(run.id).status == "succeeded"


def _lg_process(*args: str | Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lg", *map(str, args)], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def _wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run to get there"
        time.sleep(0.1)


def _step_status(store: RunStore, step_id: str) -> str | None:
    runs = store.runs(1)
    return store.step(runs[0].id, step_id).status if runs else None


def _log_has(store: RunStore, step_id: str, text: str) -> bool:
    log = store.step(store.runs(1)[0].id, step_id).log_path
    return log is not None and Path(log).is_file() and text in Path(log).read_text()


def _kill_9_leaves_no_vm(process: subprocess.Popen[str]) -> None:
    children = psutil.Process(process.pid).children(recursive=True)
    process.kill()
    process.wait(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not [c for c in alive if c.status() != psutil.STATUS_ZOMBIE], "a VM outlived its lg process"


def test_a_step_over_the_before_threshold_never_boots(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, "name: x\nsteps:\n  - {id: a, run: 'curl -s https://x | sh'}\n")
    result = lg("run", path)
    assert result.code == 3 and "waiting for approval at gate a.before" in result.err
    assert "risk: RED" in result.out and "exec.remote.pipe_to_shell" in result.out
    _, (step,) = records(project)
    assert step.status == "awaiting_approval" and step.accelerator is None


def test_if_and_continue_on_error(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: control-flow
        vars: {enabled: "no"}
        steps:
          - id: flaky
            continue_on_error: true
            run: exit 4
          - id: after
            needs: flaky
            run: echo after-ran > after.txt
          - id: optional
            if: vars.enabled == 'yes'
            run: echo ran > optional.txt
        """)
    result = lg("run", path)
    assert result.code == 0, result.out + result.err
    assert (project / "after.txt").read_text() == "after-ran\n" and not (project / "optional.txt").exists()
    _, steps = records(project)
    by_id = {s.step_id: s for s in steps}
    assert [(by_id[i].status, by_id[i].exit_code) for i in ("flaky", "after", "optional")] == [
        ("failed", 4), ("succeeded", 0), ("skipped", None)]
    assert by_id["optional"].detail == "skipped: if: vars.enabled == 'yes'"


def test_a_full_disk_while_copying_out_applies_nothing(lg: Callable[..., Any], project: Path) -> None:
    small = project / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        (small / "lg.yaml").write_text(f"image: tiny\nstate_dir: {project / '.lg'}\n")
        (small / "keep.txt").write_text("original\n")
        path = pipeline(small, """\
            name: big-output
            steps:
              - id: fill
                run: |
                  echo changed > keep.txt
                  head -c 3000000 /dev/zero > big.bin
            """)
        before = snapshot(small)
        result = lg("run", path)
        assert result.code == 1, result.out + result.err
        assert "No space left on device; nothing was applied" in result.out
        assert snapshot(small) == before and not [p for p in small.iterdir() if p.name.startswith(".lg-apply-")]
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_missing_qemu_says_how_to_install_it(lg: Callable[..., Any], project: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(project))  # a PATH with no qemu on it
    path = pipeline(project, "name: x\nsteps:\n  - {id: a, run: echo}\n")
    result = lg("run", path)
    assert result.code == 5 and "apt-get install qemu-system-x86" in result.err


def test_steps_run_unprivileged_and_root_is_a_relaxation(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: who
        steps:
          - id: whoami
            run: |
              echo "uid=$(id -u) gid=$(id -g) home=$HOME"
              echo mine > mine.txt
        """)
    result = lg("run", path)
    assert result.code == 0, result.out + result.err
    assert "[whoami] uid=1000 gid=1000 home=/workspace" in result.out
    assert (project / "mine.txt").read_text() == "mine\n"
    (project / "root.yaml").write_text("user: root\n")
    path = pipeline(project, "name: r\nprofile: ./root.yaml\nsteps:\n  - {id: a, run: id -u}\n")
    result = lg("run", path)
    assert result.code == 3 and "relax.privileged_user" in result.out
    _, (step,) = records(project)
    assert step.status == "awaiting_approval" and step.grade is not None
    assert step.grade["matches"][0]["rule"] == "relax.privileged_user"


def test_dry_run_boots_nothing(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, "name: plan\nsteps:\n  - {id: a, run: echo}\n  - {id: b, needs: a, run: echo}\n")
    result = lg("run", "--dry-run", "--json", path)
    assert result.code == 0
    assert [s["id"] for s in json.loads(result.out)["steps"]] == ["a", "b"]
    assert not (project / ".lg" / "lg.db").exists() or RunStore(project / ".lg").runs() == []


def test_missing_image_says_how_to_build_it(lg: Callable[..., Any], project: Path) -> None:
    (project / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\ncache_dir: empty-cache\n")
    path = pipeline(project, "name: x\nsteps:\n  - {id: a, run: echo}\n")
    result = lg("run", path)
    assert result.code == 5
    assert "lg image build tiny" in result.err



def qemus_of(process: subprocess.Popen[str]) -> list[psutil.Process]:
    """The QEMU processes an lg process started that are still running (zombies are dead, awaiting reaping)."""
    found = []
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if "qemu" in child.name() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_no_qemu_is_alive_while_a_run_waits_at_a_gate(lg: Callable[..., Any], project: Path) -> None:
    """Issue #20 item 7: the run's own pool kept warm VMs (and refilled them) through a --wait pause."""
    path = pipeline(project, """\
        name: paused
        steps:
          - {id: build, run: echo built > built.txt}
          - {id: ship, needs: build, approve: true, run: echo shipped > shipped.txt}
          - {id: after, needs: ship, run: echo after > after.txt}
        """)
    process = subprocess.Popen([sys.executable, "-m", "lg.cli.main", "run", "--wait", str(path)], cwd=project,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        seen_vms = 0
        for line in process.stdout:
            seen_vms = max(seen_vms, len(qemus_of(process)))
            if "waiting for a decision" in line:
                break
        assert seen_vms >= 1  # the run did keep VMs before (the step's, warm ones for the steps to come)
        assert qemus_of(process) == []
        time.sleep(2)  # the pool's refill would have started one again by now
        assert qemus_of(process) == []
        run, _ = records(project)
        assert lg("approve", run.id, "ship.before").code == 0
        rest, _ = process.communicate(timeout=300)
        assert process.returncode == 0, rest
    finally:
        if process.poll() is None:
            process.kill()
    assert (project / "shipped.txt").exists() and (project / "after.txt").exists()


def test_lg_cancel_stops_a_background_run_in_a_real_vm(project: Path) -> None:
    """Issue #20 item 1 with QEMU: `lg run &` from a script (SIGINT ignored), cancelled mid-step."""
    path = pipeline(project, """\
        name: cancelled
        steps:
          - {id: long, run: "echo step-is-running; sleep 120; echo late > late.txt"}
          - {id: after, needs: long, run: echo after > after.txt}
        """)
    process = subprocess.Popen(
        [sys.executable, "-m", "lg.cli.main", "run", str(path)], cwd=project, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # noqa: PLW1509 - as `cmd &` in sh does
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "step-is-running" in line:
                break
        vms = qemus_of(process)
        assert vms
        run, _ = records(project)
        cancel = subprocess.run([sys.executable, "-m", "lg.cli.main", "cancel", run.id], cwd=project, text=True,
                                capture_output=True, timeout=120, check=False)
        assert cancel.returncode == 0, cancel.stderr
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 4 and f"run {run.id} cancelled" in rest, rest
    finally:
        if process.poll() is None:
            process.kill()
    psutil.wait_procs(vms, timeout=15)
    assert not [vm for vm in vms if vm.is_running() and vm.status() != psutil.STATUS_ZOMBIE]
    run, steps = records(project)
    assert (run.status, [str(s.status) for s in steps]) == ("cancelled", ["cancelled", "cancelled"])
    assert not (project / "late.txt").exists() and not (project / "after.txt").exists()


def test_artifact_globs_delivery_and_cache_in_real_vms(lg: Callable[..., Any], project: Path) -> None:
    """Globs matched against the guest's files, artifacts put into the next step's VM at a guest path, and a
    cache directory that comes back in the second run's VM and never lands in the workspace."""
    (project / "lock.txt").write_text("pinned==1\n")
    path = pipeline(project, """\
        name: data
        steps:
          - id: build
            run: |
              mkdir -p dist .deps
              test -f .deps/built && echo reused > dist/how.txt || { echo fresh > dist/how.txt; touch .deps/built; }
              echo wheel > dist/app.whl
            artifacts: ["dist/*.whl", "dist/how.txt"]
            cache: {key: "deps-{{ hashFiles('lock.txt') }}", paths: [.deps]}
          - id: check
            needs: build
            artifacts_from: {build: /artifacts/build}
            run: |
              test "$(cat /artifacts/build/dist/app.whl)" = wheel
              test "$(stat -c %U /artifacts/build/dist/app.whl)" = lg
              cp /artifacts/build/dist/how.txt seen.txt
        """)
    first = lg("run", path)
    assert first.code == 0, first.out + first.err
    assert (project / "seen.txt").read_text() == "fresh\n" and not (project / ".deps").exists()
    run, steps = records(project)
    assert {c["path"] for c in steps[1].changes} == {"seen.txt"}  # received artifacts are not changes
    listed = json.loads(lg("artifacts", run.id, "--json").out)["artifacts"]
    assert sorted(a["path"] for a in listed) == ["dist/app.whl", "dist/how.txt"]
    second = lg("run", path)
    assert second.code == 0, second.out + second.err
    assert (project / "seen.txt").read_text() == "reused\n"
    assert "cache deps-" in second.out and "restored" in second.out
