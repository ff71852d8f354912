"""The confinement helper (lg/guest/confine_exec.c), compiled as the image build compiles it and run here on the
host: its option parsing, its failure reports and the identity a command ends up with. The guest-side break-out
attempts are tests/vm/test_confinement.py; these need root (for setresuid) and gcc, as the image build does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lg.guest import confine
from lg.images.build import helper_name
from tests.guest.conftest import guest_bin

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("gcc") is None,
                                reason="needs root and gcc (scripts/setup installs gcc)")


@pytest.fixture(scope="module")
def helper() -> Path:
    """Compiled as the image build compiles it, once per test session (tests/guest/conftest.py)."""
    return guest_bin() / helper_name("lg/guest/confine_exec.c")


def run(helper: Path, *options: str, command: tuple[str, ...] = ("/bin/cat", "/proc/self/status")
        ) -> tuple[int, str, str]:
    status_read, status_write = os.pipe()
    try:
        done = subprocess.run([str(helper), f"--status-fd={status_write}", *options, "--", *command],
                              pass_fds=(status_write,), capture_output=True, text=True, timeout=30, check=False)
        os.close(status_write)
        status_write = -1
        report = os.read(status_read, 4096).decode()
    finally:
        os.close(status_read)
        if status_write >= 0:
            os.close(status_write)
    return done.returncode, done.stdout, report


def fields(status: str) -> dict[str, str]:
    return {line.split(":")[0]: line.split(":", 1)[1].strip() for line in status.splitlines() if ":" in line}


def test_the_command_runs_as_the_step_user_with_no_capabilities_and_no_new_privs(helper: Path) -> None:
    everything = ",".join(str(number) for number in range(len(confine.CAPABILITIES)))
    code, out, report = run(helper, f"--drop-caps={everything}", "--gid=1000", "--uid=1000", "--no-new-privs")
    seen = fields(out)
    assert (code, report) == (0, "")  # the exec closed the status pipe without a word
    assert seen["Uid"].split()[:3] == ["1000"] * 3 and seen["Gid"].split()[:3] == ["1000"] * 3
    assert seen["Groups"] == "" and seen["NoNewPrivs"] == "1"
    assert int(seen["CapBnd"], 16) == 0 and int(seen["CapEff"], 16) == 0 and int(seen["CapAmb"], 16) == 0


def test_failures_are_reported_on_the_status_pipe_and_nothing_runs(helper: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    code, _, report = run(helper, command=("/no/such/tool",))
    assert code == 127 and report == "2 /no/such/tool: No such file or directory"
    code, _, report = run(helper, "--gid=abc", command=("/bin/touch", str(marker)))
    assert code == 126 and "--gid" in report
    code, _, report = run(helper, "--bogus=1", command=("/bin/touch", str(marker)))
    assert code == 126 and "--bogus" in report
    code, _, report = run(helper, f"--cgroup-procs={tmp_path}/no/such/cgroup.procs",
                          command=("/bin/touch", str(marker)))
    assert code == 126 and "joining the command's cgroup" in report
    assert not marker.exists()


def test_the_agent_reports_a_missing_command_as_not_found_and_the_rest_as_cannot_execute() -> None:
    missing = confine.helper_failure(b"2 /no/such/tool: No such file or directory", 127)
    refused = confine.helper_failure(b"2 /no/such/dir: No such file or directory", 126)  # a bind mount source
    assert type(missing) is FileNotFoundError and missing.errno == 2
    assert isinstance(refused, confine.SetupFailed) and not isinstance(refused, FileNotFoundError)
    assert str(refused) == "[Errno 2] /no/such/dir: No such file or directory"
