"""Shared fixtures: write files into a temporary project and run the real `lg` CLI in-process."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lg.cli.main import run

REPO = Path(__file__).resolve().parent.parent


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
        code = run([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


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
def tiny_image_ready() -> None:
    """The `tiny` guest image, built from its recipe if the cache does not have it yet (keyed by digest)."""
    from lg.config.project import load_project_config
    from lg.images.build import build_image

    build_image(load_project_config(REPO), "tiny", progress=lambda line: None)
