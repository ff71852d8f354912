"""Reports of a run (issue #19 item 7): JUnit XML read back with junitparser, GitHub workflow commands and the
job summary, the live progress view on a terminal (plain lines elsewhere), and `lg logs -f`."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from junitparser import Failure, JUnitXml, Skipped

from lg.runs.store import RunStore

REPO = Path(__file__).resolve().parents[2]
HELPER = REPO / "tests" / "runner" / "lg_on_fake.py"

MIXED = """\
    name: mixed
    steps:
      - id: build
        run: |
          echo "compiling <main.c> & friends"
          printf 'bell\\a\\n'
      - id: test
        needs: build
        run: |
          echo "3 passed, 1 failed"
          echo "assertion failed: x == 2" >&2
          exit 3
      - id: package
        needs: test
        run: echo never
"""

GATED = """\
    name: gated
    steps:
      - {id: first, run: echo first output}
      - {id: second, needs: first, approve: true, run: echo second output}
"""


def cases(path: Path) -> dict[str, Any]:
    xml = JUnitXml.fromfile(str(path))
    (suite,) = list(xml)
    return {case.name: case for case in suite}


def test_junit_has_a_testcase_per_step_with_output_and_failure(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    pipeline_file(MIXED)
    result = lg("run", "pipeline.yaml", "--junit", "reports/junit.xml")
    assert result.code == 1
    report = fake_project / "reports" / "junit.xml"
    by_name = cases(report)
    assert list(by_name) == ["build", "test", "package"]
    build, test, package = by_name["build"], by_name["test"], by_name["package"]
    assert build.is_passed and "compiling <main.c> & friends" in build.system_out
    assert "bell\ufffd" in build.system_out  # a control character XML cannot carry, replaced
    (failure,) = test.result
    assert isinstance(failure, Failure) and failure.message.startswith("failed (exit 3): ")
    assert "3 passed, 1 failed" in test.system_out and "! assertion failed: x == 2" in test.system_out
    (skipped,) = package.result
    assert isinstance(skipped, Skipped) and "needed step 'test' did not succeed" in skipped.message
    suite = next(iter(JUnitXml.fromfile(str(report))))
    assert (suite.tests, suite.failures, suite.skipped, suite.errors) == (3, 1, 1, 0)
    assert build.time >= 0 and suite.name == "mixed"
    assert [p.name for p in report.parent.iterdir()] == ["junit.xml"]  # no staging file left behind


def test_junit_is_written_when_paused_and_again_by_resume(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    pipeline_file(GATED)
    report = fake_project / "junit.xml"
    assert lg("run", "pipeline.yaml", "--junit", report).code == 3
    paused = cases(report)
    assert paused["first"].is_passed and "first output" in paused["first"].system_out
    assert isinstance(paused["second"].result[0], Skipped)  # not run yet
    run_id = RunStore(fake_project / ".lg").runs(1)[0].id
    assert lg("approve", run_id, "second.before").code == 0
    assert lg("resume", run_id, "--junit", report).code == 0
    resumed = cases(report)
    assert resumed["first"].is_passed and resumed["second"].is_passed
    assert "second output" in resumed["second"].system_out and "first output" in resumed["first"].system_out


def test_a_junit_file_that_cannot_be_written_is_refused_before_the_run(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    pipeline_file(GATED)
    (fake_project / "afile").write_text("")
    result = lg("run", "pipeline.yaml", "--junit", "afile/junit.xml")
    assert result.code == 2 and "--junit afile/junit.xml: " in result.err and "is not a directory" in result.err
    assert not (fake_project / ".lg").exists() or RunStore(fake_project / ".lg").runs(1) == []


def test_github_actions_groups_annotations_and_summary(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline_file(MIXED)
    summary = fake_project.parent / "summary.md"
    summary.write_text("earlier step's summary\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    monkeypatch.setenv("GITHUB_WORKSPACE", str(fake_project))
    result = lg("run", "pipeline.yaml")
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines.index("::group::build") < lines.index("[build] compiling <main.c> & friends") \
        < lines.index("::endgroup::") < lines.index("::group::test")
    assert lines.count("::group::test") == 1 and lines[-1].startswith("::error ")
    assert lines[-1].startswith("::error file=pipeline.yaml,line=7,col=")  # the failed step, in the file
    assert ",title=lg%3A test::step test failed (exit 3): " in lines[-1]
    text = summary.read_text()
    assert text.startswith("earlier step's summary\n### lg run `")  # appended, as GitHub expects
    assert "| `test` | ❌ failed |" in text and "| `package` | ⏭️ skipped |" in text


def test_a_paused_run_in_github_actions_tells_how_to_decide_and_resume(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #17 item 6: the gate's whole card and the exact approve and resume commands in the job summary,
    and a notice annotation; the commands printed there work as they are."""
    pipeline_file(GATED.replace("echo second output", "echo " + "a-long-argument " * 12))
    summary = fake_project.parent / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    outputs = fake_project.parent / "outputs"
    monkeypatch.setenv("GITHUB_OUTPUT", str(outputs))
    result = lg("run", "pipeline.yaml")
    assert result.code == 3
    run_id = RunStore(fake_project / ".lg").runs(1)[0].id
    assert outputs.read_text() == f"run-id={run_id}\nrun-status=awaiting_approval\n"
    text = summary.read_text()
    assert f"Awaiting approval: gate `second.before` of run `{run_id}`" in text
    assert "a-long-argument " * 3 in text  # the command in full, in the card
    (approve, resume) = text.split("```sh\n")[1].split("\n```")[0].splitlines()
    assert approve.startswith(f"lg approve {run_id} second.before --digest ") and resume == f"lg resume {run_id}"
    notices = [line for line in result.out.splitlines() if line.startswith("::notice ")]
    assert notices == [f"::notice title=lg%3A awaiting approval::run {run_id} waits at gate second.before (step "
                       f"second, {notices[0].split('(step second, ')[1].split(')')[0]}); decide with: {approve}"]
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert lg(*approve.split()[1:]).code == 0
    assert lg(*resume.split()[1:]).code == 0


def test_github_actions_annotates_invalid_input(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline_file("name: bad\nsteps:\n  - {id: a, run: echo, needs: [b]}\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    validated = lg("validate", path)
    assert validated.code == 2
    assert f"::error file={path},line=3,col=32,title=lg%3A pipeline.yaml::steps[0].needs[0]: unknown step 'b'" \
        in validated.out.splitlines()
    ran = lg("run", path)
    assert ran.code == 2 and "::error file=" in ran.out and "line=3,col=32" in ran.out
    bad_input = lg("run", path, "--input", "x=1")
    assert bad_input.code == 2 and "::error title=lg%3A invalid input::--input x" in bad_input.out
    monkeypatch.setenv("GITHUB_ACTIONS", "false")
    assert "::error" not in lg("validate", path).out


def _on_a_terminal(root: Path, *args: str, env: dict[str, str]) -> str:
    """`lg ARGS` (on the fake backend) with its stdout on a pseudo-terminal, as a person at a terminal runs it."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, str(HELPER), str(root.parent / "vms-tty"), *args], cwd=root,
                               stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100", **env})
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            process.kill()
            raise AssertionError("lg on a terminal printed nothing for 60 s")
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_the_progress_view_on_a_terminal_and_plain_lines_with_no_color(
        pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    pipeline_file("""\
        name: progress
        steps:
          - {id: one, run: "echo first; sleep 1"}
          - {id: two, needs: one, run: echo second}
        """)
    env = {key: value for key, value in os.environ.items() if key != "NO_COLOR"}
    drawn = _on_a_terminal(fake_project, "run", "pipeline.yaml", env={**env, "TERM": "xterm"})
    assert "\x1b[" in drawn  # drawn and redrawn with terminal control sequences
    plain_text = _strip_ansi(drawn)
    assert "run " in plain_text and ": progress" in plain_text
    assert "step" in plain_text and "state" in plain_text and "time" in plain_text
    assert "running" in plain_text  # seen while step one slept
    final = plain_text[plain_text.rindex("state"):]
    assert "one" in final and "two" in final and final.count("succeeded") >= 2
    assert "[one] first" in plain_text  # step output still scrolls above the view
    plain = _on_a_terminal(fake_project, "run", "pipeline.yaml", env={"NO_COLOR": "1"})
    assert "\x1b[" not in plain and "state" not in plain
    assert "[one] first" in plain and "[two] second" in plain


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.mark.timeout(180)
def test_logs_follow_prints_a_running_step_until_it_ends(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    release = fake_project.parent / "release"
    pipeline_file(f"""\
        name: follow
        steps:
          - id: slow
            run: |
              echo before
              touch started
              n=0; while [ ! -e {release} ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
              echo after
          - {{id: next, needs: slow, run: echo next step}}
        """)
    process = subprocess.Popen([sys.executable, str(HELPER), str(fake_project.parent / "vms-f"), "run",
                                "pipeline.yaml"], cwd=fake_project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        store = RunStore(fake_project / ".lg")
        deadline = time.monotonic() + 60
        while not any((fake_project.parent / "vms-f").rglob("workspace/started")):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr
            time.sleep(0.05)
        run_id = store.runs(1)[0].id
        releaser = threading.Timer(1.5, release.touch)
        releaser.start()
        started = time.monotonic()
        followed = lg("logs", "-f", run_id, "slow")
        waited = time.monotonic() - started
        releaser.join()
        assert followed.code == 0
        assert followed.out.splitlines()[-2:] == ["before", "after"]
        assert "before" in followed.out and "after" in followed.out and "next step" not in followed.out
        assert waited >= 1.0  # it followed the step: "after" was written 1.5 s after it started
        whole = lg("logs", "--follow", run_id)  # the whole run, to its end
        assert whole.code == 0 and "[next] next step" in whole.out and "[slow] after" in whole.out
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
