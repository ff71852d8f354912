"""Steps as a DAG on lg.testing.fake: overlap up to max_parallel, fail_fast, status conditions, gates per branch,
resume of a partly run DAG. Overlap is read from the store's own timestamps of each step, never assumed.
tests/runner/test_parallel_vm.py shows the same in real VMs."""

from __future__ import annotations

import threading
import time
from dataclasses import replace as changed
from pathlib import Path

import pytest

from lg.approvals.decide import decide
from lg.config.pipeline import build_pipeline
from lg.config.project import load_project_config
from lg.config.yamlsource import parse_yaml
from lg.errors import AwaitingApproval, ExitCode, StepFailed
from lg.model import Pipeline, PoolSettings
from lg.runner.engine import run_pipeline
from lg.runner.scheduler import limit_note, max_parallel
from lg.runs.gates import GateStore
from lg.runs.states import StepStatus
from lg.runs.store import RunStore, StepRecord
from tests.runner import test_engine_fake
from tests.runner.test_engine_fake import Project

project = test_engine_fake.project  # the fixture: a project on a warm pool of fake VMs

pytestmark = pytest.mark.timeout(120)


def load_pipeline_text(text: str) -> Pipeline:
    return build_pipeline(parse_yaml(text, Path("p.yaml")), load_project_config(Path("/nonexistent")))


def spans(store: RunStore, run_id: str) -> dict[str, tuple[float, float]]:
    return {s.step_id: (s.started, s.finished) for s in store.steps(run_id) if s.started and s.finished}


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """How many of the intervals overlap at the busiest instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    busiest = current = 0
    for _, change in events:
        current += change
        busiest = max(busiest, current)
    return busiest


def approve(store: RunStore, run_id: str, gate_id: str) -> None:
    gates = GateStore(store)
    gate = gates.gate(run_id, gate_id)
    assert gate is not None
    decide(gates, store.run(run_id), gate, "approve", "looked at it", user="reviewer")


def last_run(project: Project) -> tuple[str, dict[str, StepRecord]]:
    store = project.store
    run_id = store.runs(1)[0].id
    return run_id, {s.step_id: s for s in store.steps(run_id)}


# --- overlap and limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "expected"), [(None, 4), (1, 1), (2, 2)])
def test_independent_steps_overlap_up_to_max_parallel(project: Project, limit: int | None, expected: int) -> None:
    setting = f"max_parallel: {limit}" if limit else "description: lg.yaml's max_parallel"
    (project.root / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\nmax_parallel: 4\npool: {max_active: 8}\n")
    outcome = project.run(f"""\
        name: fan
        {setting}
        steps:
          - id: shard
            matrix: {{n: [1, 2, 3, 4]}}
            run: sleep 1; echo {{{{ matrix.n }}}} > out-{{{{ matrix.n }}}}.txt
        """)
    assert outcome.exit_code == ExitCode.OK
    assert sorted(p.name for p in project.root.glob("out-*.txt")) == [f"out-{n}.txt" for n in range(1, 5)]
    assert most_at_once(list(spans(project.store, outcome.run.id).values())) == expected


def test_a_matrix_max_parallel_limits_its_own_steps_only(project: Project) -> None:
    outcome = project.run("""\
        name: limited
        max_parallel: 4
        steps:
          - id: shard
            matrix: {n: [1, 2, 3, 4], max_parallel: 2}
            run: sleep 1
          - id: other
            run: sleep 1
        """)
    store = project.store
    times = spans(store, outcome.run.id)
    assert most_at_once([span for sid, span in times.items() if sid.startswith("shard-")]) == 2
    assert most_at_once(list(times.values())) == 3  # two shards and the other step


def test_a_dependent_starts_only_after_everything_it_needs(project: Project) -> None:
    outcome = project.run("""\
        name: diamond
        steps:
          - {id: a, run: sleep 0.5; echo a > a.txt}
          - {id: b, run: sleep 1; echo b > b.txt}
          - {id: c, needs: [a, b], run: "cat a.txt b.txt > c.txt"}
        """)
    times = spans(project.store, outcome.run.id)
    assert times["c"][0] >= max(times["a"][1], times["b"][1])
    assert (project.root / "c.txt").read_text() == "a\nb\n"


# --- fail_fast -----------------------------------------------------------------------------------------


def test_fail_fast_cancels_a_running_sibling_kills_its_command_and_skips_the_rest(project: Project) -> None:
    started = time.monotonic()
    with pytest.raises(StepFailed, match="cancelled: slow") as stopped:
        project.run("""\
            name: fast-fail
            max_parallel: 2
            steps:
              - {id: broken, run: sleep 0.5; exit 3}
              - {id: slow, run: "sleep 30; echo late > late.txt"}
              - {id: later, run: echo never > never.txt}
            """)
    assert stopped.value.exit_code == ExitCode.FAILED
    assert time.monotonic() - started < 15  # not the 30 s of the slow step
    run_id, steps = last_run(project)
    assert {sid: str(s.status) for sid, s in steps.items()} == {
        "broken": "failed", "slow": "cancelled", "later": "skipped"}
    assert "fail_fast" in (steps["slow"].detail or "") and "fail_fast" in (steps["later"].detail or "")
    time.sleep(0.5)
    assert not (project.root / "late.txt").exists() and not (project.root / "never.txt").exists()
    kinds = [(r.kind, r.data.get("step")) for r in project.store.audit_log.records() if r.run_id == run_id]
    assert ("step.cancelled", "slow") in kinds
    assert project.store.verify_audit() == []


def test_without_fail_fast_independent_branches_finish_and_only_dependents_are_skipped(project: Project) -> None:
    with pytest.raises(StepFailed):
        project.run("""\
            name: keep-going
            fail_fast: false
            steps:
              - {id: broken, run: sleep 0.3; exit 3}
              - {id: after, needs: broken, run: echo never > never.txt}
              - {id: slow, run: "sleep 1; echo done > done.txt"}
            """)
    _, steps = last_run(project)
    assert {sid: str(s.status) for sid, s in steps.items()} == {
        "broken": "failed", "after": "skipped", "slow": "succeeded"}
    assert (project.root / "done.txt").read_text() == "done\n"


def test_a_matrix_without_fail_fast_lets_its_shards_finish(project: Project) -> None:
    with pytest.raises(StepFailed):
        project.run("""\
            name: shards
            max_parallel: 3
            steps:
              - id: shard
                matrix: {n: [1, 2, 3], fail_fast: false}
                run: 'if [ {{ matrix.n }} = 1 ]; then exit 1; fi; sleep 1; echo ok > ok-{{ matrix.n }}.txt'
            """)
    _, steps = last_run(project)
    assert [str(s.status) for s in steps.values()] == ["failed", "succeeded", "succeeded"]


def test_a_continue_on_error_failure_stops_nothing(project: Project) -> None:
    outcome = project.run("""\
        name: tolerated
        steps:
          - {id: flaky, continue_on_error: true, run: exit 1}
          - {id: slow, run: sleep 0.5}
          - {id: next, needs: flaky, run: "true"}
        """)
    assert outcome.exit_code == ExitCode.OK
    assert [str(s.status) for s in project.store.steps(outcome.run.id)] == ["failed", "succeeded", "succeeded"]


# --- status conditions ---------------------------------------------------------------------------------


def test_cleanup_and_notify_steps_run_after_a_failure_and_the_run_still_fails(project: Project) -> None:
    with pytest.raises(StepFailed, match="build") as stopped:
        project.run("""\
            name: cleanup
            vars: {channel: ops}
            steps:
              - {id: build, run: exit 2}
              - {id: test, needs: build, run: echo never > never.txt}
              - {id: cleanup, needs: test, if: always(), run: echo cleaned > cleaned.txt}
              - {id: notify, needs: build, if: "failure() and vars.channel == 'ops'", run: echo told > told.txt}
              - {id: other-team, needs: build, if: "failure() and vars.channel == 'dev'", run: "false"}
              - {id: on-success, needs: build, if: success(), run: "false"}
              - {id: plain, needs: test, run: "false"}
            """)
    assert stopped.value.exit_code == ExitCode.FAILED
    _, steps = last_run(project)
    assert {sid: str(s.status) for sid, s in steps.items()} == {
        "build": "failed", "test": "skipped", "cleanup": "succeeded", "notify": "succeeded",
        "other-team": "skipped", "on-success": "skipped", "plain": "skipped"}
    assert (project.root / "cleaned.txt").read_text() == "cleaned\n"
    assert (project.root / "told.txt").read_text() == "told\n"
    assert project.store.runs(1)[0].error == "step(s) failed: build"


def test_cancelled_is_true_after_fail_fast_cancelled_a_needed_step(project: Project) -> None:
    with pytest.raises(StepFailed):
        project.run("""\
            name: cancelled
            max_parallel: 2
            steps:
              - {id: broken, run: sleep 0.3; exit 1}
              - {id: slow, run: sleep 30}
              - {id: after-cancel, needs: slow, if: cancelled(), run: echo noted > noted.txt}
              - {id: after-success, needs: slow, if: "success() or failure()", run: "false"}
            """)
    _, steps = last_run(project)
    assert {sid: str(s.status) for sid, s in steps.items()} == {
        "broken": "failed", "slow": "cancelled", "after-cancel": "succeeded", "after-success": "skipped"}


def test_a_step_whose_if_calls_a_status_function_is_not_cancelled_by_fail_fast(project: Project) -> None:
    with pytest.raises(StepFailed):
        project.run("""\
            name: guarded
            max_parallel: 2
            steps:
              - {id: broken, run: sleep 0.3; exit 1}
              - {id: teardown, if: always(), run: "sleep 1; echo down > down.txt"}
            """)
    _, steps = last_run(project)
    assert str(steps["teardown"].status) == "succeeded"


# --- gates in one branch -------------------------------------------------------------------------------


GATED_BRANCH = """\
    name: branches
    steps:
      - {id: deploy, approve: {reason: prod}, run: echo deployed > deployed.txt}
      - {id: after-deploy, needs: deploy, run: echo after > after.txt}
      - {id: lint, run: sleep 0.5; echo linted > linted.txt}
      - {id: test, needs: lint, run: echo tested > tested.txt}
    """


def test_a_gate_pauses_its_branch_only_and_resume_finishes_the_rest(project: Project) -> None:
    with pytest.raises(AwaitingApproval, match=r"deploy\.before") as paused:
        project.run(GATED_BRANCH)
    assert paused.value.exit_code == 3
    run_id, steps = last_run(project)
    assert {sid: str(s.status) for sid, s in steps.items()} == {
        "deploy": "awaiting_approval", "after-deploy": "pending", "lint": "succeeded", "test": "succeeded"}
    assert str(project.store.run(run_id).status) == "awaiting_approval"
    ran_before = len(project.steps.attempts)
    approve(project.store, run_id, "deploy.before")
    outcome = project.resume(run_id)
    assert outcome.exit_code == ExitCode.OK
    assert sorted(step for _, step in project.steps.attempts[ran_before:]) == ["after-deploy", "deploy"]
    assert (project.root / "after.txt").read_text() == "after\n"


def test_a_gate_decided_while_other_branches_run_lets_its_branch_go_on(project: Project) -> None:
    store = project.store

    def approve_when_open() -> None:  # another lg process would, with its own connection
        mine = RunStore(project.root / ".lg")
        gates = GateStore(mine)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runs = mine.runs(1)
            gate = gates.gate(runs[0].id, "deploy.before") if runs else None
            if gate is not None and gate.is_open:
                approve(mine, runs[0].id, "deploy.before")
                return
            time.sleep(0.05)

    approver = threading.Thread(target=approve_when_open)
    approver.start()
    outcome = project.run(GATED_BRANCH.replace("sleep 0.5", "sleep 3"))
    approver.join()
    assert outcome.exit_code == ExitCode.OK  # never paused: lint was still running when deploy was approved
    kinds = [r.kind for r in store.audit_log.records() if r.run_id == outcome.run.id]
    assert "run.paused" not in kinds and "gate.approved" in kinds


def test_fail_fast_cancels_a_branch_waiting_at_its_gate(project: Project) -> None:
    with pytest.raises(StepFailed):
        project.run("""\
            name: gated-and-broken
            steps:
              - {id: deploy, approve: true, run: echo deployed > deployed.txt}
              - {id: broken, run: sleep 0.5; exit 1}
            """)
    run_id, steps = last_run(project)
    assert str(steps["deploy"].status) == "cancelled"
    assert {g.gate_id: str(g.status) for g in GateStore(project.store).gates(run_id)} == {
        "deploy.before": "cancelled"}


def test_a_paused_dag_resumes_without_running_ended_steps_again(project: Project) -> None:
    with pytest.raises(AwaitingApproval):
        project.run("""\
            name: partial
            steps:
              - {id: a, run: echo a > a.txt}
              - {id: b, needs: a, approve: true, run: echo b > b.txt}
              - {id: c, run: echo c > c.txt}
              - {id: d, needs: [b, c], run: "cat a.txt b.txt c.txt > d.txt"}
            """)
    run_id, steps = last_run(project)
    assert {sid: s.status for sid, s in steps.items()} == {
        "a": StepStatus.SUCCEEDED, "b": StepStatus.AWAITING_APPROVAL, "c": StepStatus.SUCCEEDED,
        "d": StepStatus.PENDING}
    approve(project.store, run_id, "b.before")
    project.resume(run_id)
    assert [step for _, step in project.steps.attempts].count("a") == 1
    assert (project.root / "d.txt").read_text() == "a\nb\nc\n"


def test_output_lines_of_parallel_steps_stay_whole_and_prefixed(project: Project) -> None:
    project.run("""\
        name: chatty
        steps:
          - id: talk
            matrix: {n: [1, 2, 3]}
            run: 'for i in $(seq 1 200); do echo "line-{{ matrix.n }}-$i-xxxxxxxxxxxxxxxxxxxxxxxx"; done'
        """)
    lines = [line for line in project.echoed if "line-" in line]
    assert len(lines) == 600
    for line in lines:
        prefix, text = line.split(" ", 1)
        n = text.split("-")[1]
        assert prefix == f"[talk-{n}]" and text.endswith("-xxxxxxxxxxxxxxxxxxxxxxxx"), line


def test_the_audit_chain_stays_whole_with_steps_ending_at_once(project: Project) -> None:
    outcome = project.run("""\
        name: many
        max_parallel: 8
        steps:
          - id: s
            matrix: {n: [1, 2, 3, 4, 5, 6, 7, 8]}
            run: echo {{ matrix.n }} > f{{ matrix.n }}.txt
        """)
    store = project.store
    assert store.verify_audit() == []
    applied = [r for r in store.audit_log.records() if r.run_id == outcome.run.id and r.kind == "effects.applied"]
    assert len(applied) == 8
    assert sorted(p.name for p in Path(project.root).glob("f*.txt")) == [f"f{n}.txt" for n in range(1, 9)]


def test_a_run_time_template_that_spins_is_stopped_though_steps_run_in_threads(project: Project) -> None:
    spin = "{% for a in steps.big.outputs.x %}{% for b in steps.big.outputs.x %}{% for c in steps.big.outputs.x %}" \
           "{% endfor %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(StepFailed, match="took longer than"):
        project.run(f"""\
            name: spin
            steps:
              - {{id: big, run: "printf 'x=%0999d' 0 >> $LG_OUTPUT", outputs: [x]}}
              - {{id: loop, needs: big, run: "echo {spin}"}}
            """)
    assert time.monotonic() - started < 30


def test_steps_at_once_never_silently_undo_each_other_s_change(project: Project) -> None:
    with pytest.raises(StepFailed):
        project.run("""\
            name: clash
            fail_fast: false
            steps:
              - {id: first, run: "echo first > shared.txt; mkdir -p out; echo 1 > out/one.txt"}
              - {id: second, run: "sleep 0.5; echo second > shared.txt; mkdir -p out; echo 2 > out/two.txt"}
              - {id: same, run: "sleep 1; echo first > shared.txt"}
            """)
    _, steps = last_run(project)
    assert {sid: str(s.status) for sid, s in steps.items()} == {
        "first": "succeeded", "second": "failed", "same": "succeeded"}
    assert "shared.txt was changed by step 'first', which ran at the same time" in (steps["second"].detail or "")
    assert (project.root / "shared.txt").read_text() == "first\n"
    assert (project.root / "out/one.txt").exists() and not (project.root / "out/two.txt").exists()


def test_independent_changes_of_one_directory_all_land(project: Project) -> None:
    outcome = project.run("""\
        name: together
        steps:
          - id: part
            matrix: {n: [1, 2, 3]}
            run: "mkdir -p out; echo {{ matrix.n }} > out/{{ matrix.n }}.txt"
        """)
    assert outcome.exit_code == ExitCode.OK
    assert sorted(p.name for p in (project.root / "out").iterdir()) == ["1.txt", "2.txt", "3.txt"]


def test_the_default_max_parallel_is_two_a_core_within_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_project_config(Path("/nonexistent"))
    pipeline = changed(load_pipeline_text("name: x\nsteps: [{id: a, run: echo}]\n"), max_parallel=None)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert max_parallel(pipeline, changed(config, pool=PoolSettings(max_active=8))) == 4
    assert max_parallel(pipeline, changed(config, pool=PoolSettings(max_active=3))) == 3
    assert max_parallel(changed(pipeline, max_parallel=6), changed(config, pool=PoolSettings(max_active=8))) == 6
    assert max_parallel(pipeline, changed(config, max_parallel=5, pool=PoolSettings(max_active=8))) == 5
    assert max_parallel(changed(pipeline, max_parallel=50), changed(config, pool=PoolSettings(max_active=8))) == 8
    assert "raise pool.max_active" in (limit_note(changed(pipeline, max_parallel=50),
                                                  changed(config, pool=PoolSettings(max_active=8))) or "")
    assert limit_note(pipeline, changed(config, pool=PoolSettings(max_active=8))) is None


def test_with_wait_the_run_waits_only_once_nothing_else_can_run(project: Project) -> None:
    store = project.store

    def approve_once_paused() -> None:
        mine = RunStore(project.root / ".lg")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = mine.runs(1)
            if runs and str(runs[0].status) == "awaiting_approval":
                approve(mine, runs[0].id, "deploy.before")
                return
            time.sleep(0.05)

    approver = threading.Thread(target=approve_once_paused)
    approver.start()
    request = changed(project.request(GATED_BRANCH), wait=True)
    outcome = run_pipeline(request, store)
    approver.join()
    assert outcome.exit_code == ExitCode.OK
    kinds = [(r.kind, r.data.get("step")) for r in store.audit_log.records() if r.run_id == outcome.run.id]
    paused = kinds.index(("run.paused", None))
    assert ("effects.applied", "test") in kinds[:paused]  # the other branch ran to its end first
    assert ("run.continued", None) in kinds[paused:] and ("effects.applied", "after-deploy") in kinds[paused:]


def test_a_matrix_fail_fast_cancels_its_own_steps_only_when_the_pipeline_s_is_off(project: Project) -> None:
    with pytest.raises(StepFailed):
        project.run("""\
            name: shards-stop
            fail_fast: false
            max_parallel: 4
            steps:
              - id: shard
                matrix: {n: [1, 2, 3], fail_fast: true}
                run: 'if [ {{ matrix.n }} = 1 ]; then sleep 0.3; exit 1; fi; sleep 30'
              - {id: other, run: "sleep 1; echo other > other.txt"}
            """)
    _, steps = last_run(project)
    assert {sid: str(s.status) for sid, s in steps.items()} == {
        "shard-1": "failed", "shard-2": "cancelled", "shard-3": "cancelled", "other": "succeeded"}
