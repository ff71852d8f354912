"""The real engine (run_pipeline, resume_run) through its success and failure paths, on lg.testing.fake.

Every step leases its VM from a real warm pool (template snapshot, restores, warm-up, identity) over the fake
backend, whose VMs are directories and whose commands run on the host: seconds for the whole file, no QEMU.
What is asserted is what a user sees: the workspace, the exceptions (exit codes), the step records' statuses.
tests/runner/test_run_vm.py runs the same paths end to end in real VMs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from lg.approvals.decide import decide
from lg.config.project import load_project_config
from lg.config.secrets import SecretValues
from lg.errors import ApprovalRejected, AwaitingApproval, ExitCode, InvalidInput, StepFailed
from lg.inputs.run_inputs import load_run_inputs
from lg.policy.load import load_policy
from lg.pool.pool import WarmPool
from lg.runner.engine import RunOutcome, RunRequest, resume_run, run_pipeline
from lg.runs.gates import GateStore
from lg.runs.store import RunStore
from lg.testing.fake import FakeHypervisor, FakeVm, fake_pool
from lg.testing.images import stand_in_image
from lg.vm.api import ExecRequest, ExecResult, OutputCallback

REPO = Path(__file__).resolve().parents[2]
GUEST_WORKSPACE = "/workspace"


class Killed(BaseException):
    """Stands for SIGKILL of the lg process: nothing in the engine catches it, nothing is recorded after it."""


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Steps:
    """A handler that sees every exec; the step commands (run in the workspace) can be scripted by attempt."""

    script: Callable[[FakeVm, ExecRequest, int], ExecResult | None] | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (VM id, step id) per step command run

    def __call__(self, vm: FakeVm, request: ExecRequest, on_output: OutputCallback | None) -> ExecResult | None:
        if request.cwd is None or not request.cwd.startswith(GUEST_WORKSPACE):
            return None  # lg's own commands (the pool's warm-up): run for real
        self.attempts.append((vm.id, request.env.get("LG_STEP_ID", "")))
        return self.script(vm, request, len(self.attempts)) if self.script is not None else None

    def of(self, step_id: str) -> list[str]:
        return [vm for vm, step in self.attempts if step == step_id]


@dataclass
class Project:
    root: Path
    hypervisor: FakeHypervisor
    steps: Steps
    pool: WarmPool
    clock: Clock
    echoed: list[str]

    @property
    def store(self) -> RunStore:
        return RunStore(self.root / ".lg")

    def request(self, body: str, policy: str = "default") -> RunRequest:
        path = self.root / "pipeline.yaml"
        path.write_text(textwrap.dedent(body))
        inputs = load_run_inputs(path, with_images=True)
        inputs = replace(inputs, policy=load_policy(policy, inputs.config, self.root))
        return RunRequest(inputs, self.root, SecretValues({}), self.echoed.append, clock=self.clock, vms=self.pool)

    def run(self, body: str) -> RunOutcome:
        return run_pipeline(self.request(body), self.store)

    def resume(self, run_id: str) -> RunOutcome:
        body = (self.root / "pipeline.yaml").read_text()
        store = self.store
        return resume_run(self.request(body), store, store.claim(run_id, "tester"))

    def statuses(self, run_id: str) -> dict[str, str]:
        return {step.step_id: str(step.status) for step in self.store.steps(run_id)}

    def files(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes() for p in sorted(self.root.rglob("*"))
                if p.is_file() and not p.is_symlink() and p.relative_to(self.root).parts[0] != ".lg"
                and p.name != "pipeline.yaml"}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Project]:
    root = tmp_path / "project"
    root.mkdir()
    (root / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\n")
    (root / "keep.txt").write_text("original\n")
    (root / "remove-me.txt").write_text("bye\n")
    (root / "package.json").write_text('{"name": "app"}\n')
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))  # outside the workspace, as VMs are
    stand_in_image(load_project_config(root), "tiny")
    steps = Steps()
    hypervisor = FakeHypervisor(tmp_path / "vms", handler=steps)
    with fake_pool(hypervisor, tmp_path / "templates") as pool:
        yield Project(root, hypervisor, steps, pool, Clock(), [])
    assert [vm.id for vm in hypervisor.booted if vm.directory.exists()] == [], "a VM outlived its lease"


def failed(exit_code: int) -> ExecResult:
    return ExecResult(exit_code=exit_code, signal=None, timed_out=False, duration=0.01)


# --- success -------------------------------------------------------------------------------------------


def test_a_step_s_changes_land_in_the_workspace_byte_for_byte(project: Project) -> None:
    outcome = project.run("""\
        name: changes
        steps:
          - id: make
            run: |
              head -c 100000 /dev/urandom > random.bin
              sha256sum random.bin > random.sha256
              echo changed > keep.txt
              rm remove-me.txt
              mkdir -p out && printf 'x' > out/mode.txt && chmod 600 out/mode.txt
        """)
    assert outcome.exit_code == ExitCode.OK
    root = project.root
    digest = (root / "random.sha256").read_text().split()[0]
    assert hashlib.sha256((root / "random.bin").read_bytes()).hexdigest() == digest
    assert (root / "keep.txt").read_text() == "changed\n" and not (root / "remove-me.txt").exists()
    assert (root / "out/mode.txt").stat().st_mode & 0o777 == 0o600
    (step,) = project.store.steps(outcome.run.id)
    assert str(step.status) == "succeeded" and str(outcome.run.status) == "succeeded"
    assert {c["path"]: c["kind"] for c in step.changes} == {
        "random.bin": "created", "random.sha256": "created", "keep.txt": "modified", "remove-me.txt": "deleted",
        "out/mode.txt": "created"}
    assert step.security is not None and "NOT enforced" in step.security["seccomp"]  # the fake confines nothing


def test_outputs_pass_between_steps_and_each_step_has_a_fresh_vm(project: Project) -> None:
    outcome = project.run("""\
        name: outputs
        steps:
          - id: answer
            run: echo "answer=42" >> "$LG_OUTPUT"
            outputs: [answer]
          - id: version
            run: echo 1.2.3 > version.txt
            outputs: {version: version.txt}
          - id: use
            needs: [answer, version]
            run: echo "{{ steps.answer.outputs.answer }} {{ steps.version.outputs.version }}" > used.txt
        """)
    assert outcome.exit_code == ExitCode.OK
    assert (project.root / "used.txt").read_text() == "42 1.2.3\n"
    assert project.store.step(outcome.run.id, "answer").outputs == {"answer": "42"}
    assert project.store.step(outcome.run.id, "version").outputs == {"version": "1.2.3"}
    assert len({vm for vm, _ in project.steps.attempts}) == 3  # one VM per step, never reused


# --- failures ------------------------------------------------------------------------------------------


def test_a_failed_attempt_is_retried_in_a_fresh_vm_and_only_the_success_lands(project: Project) -> None:
    def first_fails(vm: FakeVm, request: ExecRequest, attempt: int) -> ExecResult | None:
        if attempt == 1:
            vm.host_path("/workspace/partial.txt").write_text("from the failed attempt")
            return failed(1)
        return None

    project.steps.script = first_fails
    outcome = project.run("""\
        name: flaky
        steps:
          - {id: flaky, retries: 2, run: echo done > done.txt}
        """)
    assert outcome.exit_code == ExitCode.OK
    step = project.store.step(outcome.run.id, "flaky")
    assert (str(step.status), step.attempts) == ("succeeded", 2)
    first, second = project.steps.of("flaky")
    assert first != second
    assert (project.root / "done.txt").read_text() == "done\n" and not (project.root / "partial.txt").exists()


def test_a_step_failing_every_attempt_fails_the_run_and_changes_nothing(project: Project) -> None:
    before = project.files()
    with pytest.raises(StepFailed) as stopped:
        project.run("""\
            name: broken
            steps:
              - {id: broken, retries: 1, run: "echo half > half.txt; exit 3"}
              - {id: after, needs: broken, run: echo never > never.txt}
            """)
    assert stopped.value.exit_code == ExitCode.FAILED
    run_id = project.store.runs(1)[0].id
    assert project.statuses(run_id) == {"broken": "failed", "after": "skipped"}
    assert project.store.step(run_id, "broken").exit_code == 3 and len(project.steps.of("broken")) == 2
    assert project.files() == before


def test_a_step_timeout_kills_it_and_applies_nothing(project: Project) -> None:
    started = time.monotonic()
    with pytest.raises(StepFailed):
        project.run("""\
            name: slow
            steps:
              - {id: slow, timeout: 1s, run: "echo early > early.txt; sleep 60"}
            """)
    assert time.monotonic() - started < 15
    step = project.store.steps(project.store.runs(1)[0].id)[0]
    assert str(step.status) == "timed_out" and "timed out" in (step.detail or "")
    assert not (project.root / "early.txt").exists()


def test_continue_on_error_lets_the_run_go_on(project: Project) -> None:
    outcome = project.run("""\
        name: tolerant
        steps:
          - {id: lint, continue_on_error: true, run: "exit 1"}
          - {id: build, needs: lint, run: echo built > built.txt}
        """)
    assert outcome.exit_code == ExitCode.OK
    assert project.statuses(outcome.run.id) == {"lint": "failed", "build": "succeeded"}
    assert (project.root / "built.txt").read_text() == "built\n"


# --- the effects gate ----------------------------------------------------------------------------------

DEPENDENCY_CHANGE = """\
    name: deps
    steps:
      - id: bump
        run: |
          echo '{"name": "app", "dependencies": {"left-pad": "1.3.0"}}' > package.json
          echo notes > notes.txt
"""


def held(project: Project) -> str:
    before = project.files()
    with pytest.raises(AwaitingApproval) as paused:
        project.run(DEPENDENCY_CHANGE)
    assert paused.value.exit_code == ExitCode.AWAITING_APPROVAL
    run_id = project.store.runs(1)[0].id
    assert project.statuses(run_id) == {"bump": "held"}
    assert project.files() == before  # held: nothing applied while the gate is open
    return run_id


def decide_gate(project: Project, run_id: str, verdict: str) -> None:
    gates = GateStore(project.store, project.clock)
    (gate,) = gates.open_gates()
    assert gate.gate_id == "bump.effects"
    decide(gates, project.store.run(run_id), gate, verdict, "looked at it", user="reviewer")  # type: ignore[arg-type]


def test_held_effects_approved_are_applied_on_resume(project: Project) -> None:
    run_id = held(project)
    decide_gate(project, run_id, "approve")
    outcome = project.resume(run_id)
    assert outcome.exit_code == ExitCode.OK and project.statuses(run_id) == {"bump": "succeeded"}
    assert json.loads((project.root / "package.json").read_text())["dependencies"] == {"left-pad": "1.3.0"}
    assert (project.root / "notes.txt").read_text() == "notes\n"
    assert len(project.steps.of("bump")) == 1  # applied from what was held, not run again


def test_held_effects_rejected_are_discarded_and_nothing_lands(project: Project) -> None:
    run_id = held(project)
    before = project.files()
    decide_gate(project, run_id, "reject")
    with pytest.raises(ApprovalRejected) as stopped:
        project.resume(run_id)
    assert stopped.value.exit_code == ExitCode.REJECTED
    assert project.statuses(run_id) == {"bump": "rejected"}
    assert project.files() == before
    assert not (project.store.run_dir(run_id) / "effects" / "bump").exists()


# --- a killed lg process -------------------------------------------------------------------------------

TWO_STEPS = """\
    name: two
    steps:
      - {id: first, run: echo one > one.txt}
      - {id: second, needs: first, run: echo two > two.txt}
"""


def test_a_run_killed_mid_step_resumes_that_step_from_scratch(project: Project) -> None:
    def killed_in_second(vm: FakeVm, request: ExecRequest, attempt: int) -> ExecResult | None:
        if request.env.get("LG_STEP_ID") == "second" and len(project.steps.of("second")) == 1:
            vm.host_path("/workspace/partial.txt").write_text("half-done")
            raise Killed
        return None

    project.steps.script = killed_in_second
    with pytest.raises(Killed):
        project.run(TWO_STEPS)
    run_id = project.store.runs(1)[0].id
    assert str(project.store.run(run_id).status) == "running"  # as a SIGKILL leaves it
    assert project.statuses(run_id) == {"first": "succeeded", "second": "running"}
    assert (project.root / "one.txt").exists() and not (project.root / "two.txt").exists()
    outcome = project.resume(run_id)
    assert outcome.exit_code == ExitCode.OK
    assert project.statuses(run_id) == {"first": "succeeded", "second": "succeeded"}
    assert len(project.steps.of("first")) == 1 and len(project.steps.of("second")) == 2
    assert (project.root / "two.txt").read_text() == "two\n" and not (project.root / "partial.txt").exists()


def test_a_run_whose_lg_process_died_is_resumed_by_another(project: Project, tmp_path: Path) -> None:
    """The real thing: an lg process SIGKILLed mid-step leaves the run `running` under a dead pid."""
    (project.root / "pipeline.yaml").write_text(textwrap.dedent("""\
        name: killed
        steps:
          - {id: first, run: echo one > one.txt}
          - {id: slow, needs: first, run: echo late > late.txt}
        """))
    helper = subprocess.Popen([sys.executable, "-c", KILLED_HELPER, str(project.root), str(tmp_path / "helper-vms")],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE)
    try:
        run_id = _wait_for_slow_step(project, helper, tmp_path / "helper-vms")
        with pytest.raises(InvalidInput, match="still being run by lg process"):
            project.store.claim(run_id, "tester")
    finally:
        helper.send_signal(signal.SIGKILL)
        helper.wait(timeout=30)
    record = project.store.run(run_id)
    assert str(record.status) == "running" and record.abandoned
    outcome = project.resume(run_id)
    assert outcome.exit_code == ExitCode.OK
    assert project.statuses(run_id) == {"first": "succeeded", "slow": "succeeded"}
    assert (project.root / "one.txt").exists() and (project.root / "late.txt").read_text() == "late\n"
    assert not (project.root / "started").exists()  # written by the killed attempt, in its VM only
    assert project.steps.of("first") == []  # ended before the kill: not run again


KILLED_HELPER = """
import sys, time
from pathlib import Path
from lg.config.pipeline import load_pipeline
from lg.config.secrets import SecretValues
from lg.inputs.run_inputs import load_run_inputs
from lg.runner.engine import RunRequest, run_pipeline
from lg.runs.store import RunStore
from lg.testing.fake import FakeHypervisor, fake_pool

def hang_in_slow(vm, request, on_output):
    if request.env.get("LG_STEP_ID") == "slow":
        vm.host_path("/workspace/started").write_text("")
        time.sleep(600)  # until the test kills this process
    return None

root = Path(sys.argv[1])
inputs = load_run_inputs(root / "pipeline.yaml", with_images=True)
with fake_pool(FakeHypervisor(Path(sys.argv[2]), handler=hang_in_slow)) as pool:
    request = RunRequest(inputs, root, SecretValues({}), lambda line: None, vms=pool)
    run_pipeline(request, RunStore(root / ".lg"))
"""


def _wait_for_slow_step(project: Project, helper: subprocess.Popen[bytes], vms: Path) -> str:
    """The run id, once the helper's slow step is running in its fake VM."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert helper.poll() is None, helper.stderr.read() if helper.stderr else ""
        try:
            if list(vms.rglob("workspace/started")):
                return project.store.runs(1)[0].id
        except FileNotFoundError:
            pass  # a VM directory the pool removed while the walk was in it

        time.sleep(0.05)
    raise AssertionError("the helper's run never reached its slow step")
