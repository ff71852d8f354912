"""The runner at gates that stop a step before it boots: pause, expiry and its on_timeout, required gates.

No VM boots here: every step either waits at a gate or is decided before it would run.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from lg.config.secrets import SecretValues
from lg.errors import ApprovalRejected, AwaitingApproval
from lg.inputs.run_inputs import load_run_inputs
from lg.model import FileChange
from lg.policy.grade import grade_effects, grade_script
from lg.policy.load import load_policy, load_policy_file
from lg.runner.engine import RunRequest, resume_run, run_pipeline
from lg.runner.gating import before_gate, effects_gate
from lg.runs.gates import GateStore
from lg.runs.store import RunStore

POLICY = """\
    extends: default
    approvals:
      allow_self_approval: true
      timeout: 1h
      on_timeout: {on_timeout}
      groups:
        release: [rel-a, rel-b]
    required_gates:
      - id: release_steps
        reason: releases are signed off by the release group
        steps: ["release*"]
        approvers: [group:release]
        count: 2
      - id: deploy_config
        reason: deployment config changes need review
        paths: ["deploy/**"]
"""


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\n")
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    return tmp_path


def request(project: Path, body: str, clock: Clock, on_timeout: str = "reject") -> RunRequest:
    (project / "gated.yaml").write_text(textwrap.dedent(POLICY.format(on_timeout=on_timeout)))
    path = project / "pipeline.yaml"
    path.write_text(textwrap.dedent(body))
    inputs = load_run_inputs(path)
    inputs = replace(inputs, policy=load_policy("./gated.yaml", inputs.config, project))
    return RunRequest(inputs, project, SecretValues({}), lambda line: None, clock=clock)


def paused(project: Path, req: RunRequest) -> tuple[RunStore, str]:
    store = RunStore(project / ".lg")
    with pytest.raises(AwaitingApproval):
        run_pipeline(req, store)
    return store, store.runs(1)[0].id


TWO_GATED = """\
    name: two-gates
    steps:
      - id: first
        approve: {reason: first look}
        run: echo one > one.txt
      - id: second
        needs: first
        approve: {reason: second look}
        run: echo two > two.txt
"""


@pytest.mark.parametrize(("on_timeout", "run_status", "first", "second"), [
    ("reject", "expired", "expired", "skipped"),
    ("fail", "expired", "expired", "skipped"),
])
def test_an_expired_gate_stops_the_run_as_expired(project: Path, on_timeout: str, run_status: str, first: str,
                                                  second: str) -> None:
    clock = Clock()
    req = request(project, TWO_GATED, clock, on_timeout)
    store, run_id = paused(project, req)
    assert store.run(run_id).status == "awaiting_approval" and store.run(run_id).pid is None
    clock.now += 3601
    with pytest.raises(ApprovalRejected, match="was expired") as stopped:
        resume_run(req, store, store.claim(run_id, by="resumer"))
    assert stopped.value.exit_code == 4
    assert store.run(run_id).status == run_status
    assert [s.status for s in store.steps(run_id)] == [first, second]
    assert not (project / "one.txt").exists()
    kinds = [record.kind for record in store.audit_log.records()]
    assert "gate.expired" in kinds and "gate.rejected" not in kinds


def test_on_timeout_continue_lets_the_run_go_on_without_the_step(project: Path) -> None:
    clock = Clock()
    req = request(project, TWO_GATED, clock, "continue")
    store, run_id = paused(project, req)
    clock.now += 3601
    with pytest.raises(AwaitingApproval, match=r"gate second\.before"):  # the run went on, to the next gate
        resume_run(req, store, store.claim(run_id, by="resumer"))
    assert [s.status for s in store.steps(run_id)] == ["expired", "awaiting_approval"]


def test_a_rejected_before_gate_never_boots_and_stops_the_run(project: Path) -> None:
    clock = Clock()
    req = request(project, TWO_GATED, clock)
    store, run_id = paused(project, req)
    gates = GateStore(store, clock)
    from lg.approvals.decide import decide

    (gate,) = gates.open_gates()
    decide(gates, store.run(run_id), gate, "reject", "not today", user="rel-a")
    with pytest.raises(ApprovalRejected, match="was rejected"):
        resume_run(req, store, store.claim(run_id, by="resumer"))
    steps = store.steps(run_id)
    assert [(s.status, s.accelerator) for s in steps] == [("rejected", None), ("skipped", None)]
    assert "rejected by rel-a: not today" in (steps[0].detail or "")


def test_a_policy_s_required_gates_cannot_be_removed_or_weakened_by_a_pipeline(project: Path) -> None:
    req = request(project, """\
        name: release
        steps:
          - id: release-prod
            approve: {approvers: [mallory], count: 1, timeout: 1s, on_timeout: continue}
            run: echo release
          - id: build
            run: echo build
        """, Clock())
    policy, pipeline = req.policy, req.pipeline
    release, build = pipeline.steps
    need = before_gate(policy, release, grade_script(policy, release.run or ""))
    assert need is not None and need.kind == "explicit"
    # The policy's approvers, count, timeout and on_timeout win over what the pipeline asked for.
    assert (need.rules.eligible, need.rules.count, need.rules.timeout, need.rules.on_timeout) == (
        ("rel-a", "rel-b"), 2, 3600.0, "reject")
    assert any("release_steps" in reason for reason in need.reasons)
    assert before_gate(policy, build, grade_script(policy, build.run or "")) is None
    touched = (FileChange("deploy/prod/values.yaml", "modified", 10, "ab" * 32, 0o644, 0o644),)
    effects = effects_gate(policy, build, grade_effects(policy, touched), touched)
    assert effects is not None and "deploy_config" in effects.reasons[0]
    elsewhere = (FileChange("src/main.c", "modified", 10, "ab" * 32, 0o644, 0o644),)
    assert effects_gate(policy, build, grade_effects(policy, elsewhere), elsewhere) is None


def test_required_gates_are_inherited_and_cannot_be_replaced(project: Path) -> None:
    (project / "base.yaml").write_text(textwrap.dedent(POLICY.format(on_timeout="reject")))
    (project / "child.yaml").write_text("extends: ./base.yaml\nrequired_gates:\n"
                                        "  - {id: deploy_config, reason: weaker, paths: [nothing/**]}\n")
    from lg.errors import InvalidInput

    with pytest.raises(InvalidInput, match="an inherited gate cannot be replaced") as error:
        load_policy_file(project / "child.yaml")
    assert "child.yaml:3" in str(error.value)
    (project / "child.yaml").write_text("extends: ./base.yaml\nrequired_gates:\n"
                                        "  - {id: extra, reason: more, steps: [x], approvers: [group:nobody]}\n")
    with pytest.raises(InvalidInput, match="unknown group 'nobody'"):
        load_policy_file(project / "child.yaml")
    (project / "child.yaml").write_text("extends: ./base.yaml\nrequired_gates:\n"
                                        "  - {id: extra, reason: more, steps: [x], approvers: [group:release]}\n")
    assert [g.id for g in load_policy_file(project / "child.yaml").required_gates] == [
        "release_steps", "deploy_config", "extra"]
