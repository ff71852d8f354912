"""`lg run` end to end: real pipelines, each step in a real microVM (tiny image, TCG on these machines)."""

from __future__ import annotations

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


def test_effects_over_the_threshold_are_held_not_applied(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, """\
        name: risky-effects
        steps:
          - id: ci
            run: |
              mkdir -p .github/workflows
              echo "on: push" > .github/workflows/ci.yml
              echo changed > keep.txt
        """)
    before = snapshot(project)
    result = lg("run", path)
    assert result.code == 5
    assert "held for review by effects.ci_config; nothing was applied" in result.err
    assert snapshot(project) == before
    run, (step,) = records(project)
    assert (run.status, step.status) == ("blocked", "held")
    assert step.effects_grade is not None and step.effects_grade["level"] == "orange"
    kinds = [record.kind for record in RunStore(project / ".lg").audit_log.records()]
    assert "effects.discarded" in kinds


def test_a_step_over_the_before_threshold_never_boots(lg: Callable[..., Any], project: Path) -> None:
    path = pipeline(project, "name: x\nsteps:\n  - {id: a, run: 'curl -s https://x | sh'}\n")
    result = lg("run", path)
    assert result.code == 5 and "graded red" in result.err and "nothing run" in result.err
    _, (step,) = records(project)
    assert step.status == "blocked" and step.accelerator is None


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
    assert result.code == 5 and "relax.privileged_user" in result.err
    _, (step,) = records(project)
    assert step.status == "blocked" and step.grade is not None
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

