"""Shared fixtures: write files into a temporary project and run the real `lg` CLI in-process."""

from __future__ import annotations

import contextlib
import re
import signal
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.register_assert_rewrite("lg.testing")  # the shipped conformance checks are assertions: explain failures

from lg.cli.main import run  # noqa: E402 - after the rewrite hook, which must come before lg.testing loads
from tests.stores import pg_cluster, store_backend  # noqa: E402, F401 - the store suite's backends, for every test

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_pool_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs use their own pool unless a test starts a daemon: a daemon serving on the host's default socket
    (a user's, or one left by a benchmark) must not decide what the suite tests. CI runs on the machine the
    team works on, so this is not hypothetical."""
    monkeypatch.setenv("LG_POOL_SOCKET", str(tmp_path_factory.getbasetemp() / "no-daemon" / "pool.sock"))


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def lg(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `lg ARGS...` in-process through the real entry point (including its error handler)."""

    def invoke(*args: str | Path) -> CliResult:
        capsys.readouterr()
        with _signal_handlers_kept():
            code = run([str(arg) for arg in args])
        captured = capsys.readouterr()
        print(_crash_report(captured.err), end="")  # unread capture: pytest shows it if the test then fails
        return CliResult(code, captured.out, captured.err)

    return invoke


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """`lg run` and `lg resume` install their interrupt handlers (lg.runner.interrupts), as a process does; run
    in-process, they must not outlive the command and turn pytest's own SIGTERM/SIGINT into lg's interrupts."""
    kept = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in kept.items():
            signal.signal(number, handler)


def _crash_report(err: str) -> str:
    """The traceback an internal error left in its crash log, for the report of a failing test (CI shows the
    report, not the machine's files)."""
    found = re.search(r"The traceback is in (\S+?);", err)
    if found is None:
        return ""
    try:
        return "\n" + Path(found.group(1)).read_text()
    except OSError:
        return ""


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Write a (dedented) file into a temporary project directory and return its path."""

    def writer(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
        return path

    return writer


@pytest.fixture(scope="session")
def default_image_ready() -> None:
    """The `default` guest image (Python, git, make): scripts/setup builds it; built here if the cache lacks it."""
    from lg.config.project import load_project_config
    from lg.images.build import build_image

    build_image(load_project_config(REPO), "default", progress=lambda line: None)


@pytest.fixture(scope="session")
def tiny_image_ready() -> None:
    """The `tiny` guest image, built from its recipe if the cache does not have it yet (keyed by digest)."""
    from lg.config.project import load_project_config
    from lg.images.build import build_image

    build_image(load_project_config(REPO), "tiny", progress=lambda line: None)
