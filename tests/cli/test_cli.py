"""The CLI contract: exit codes, `--json`, error format, and no traceback or written state on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from lg import __version__
from lg.cli import main as cli_main
from tests.conftest import REPO

GOOD = "name: ok\nsteps:\n  - {id: a, run: echo hi}\n"
BAD = "name: bad\nsteps:\n  - {id: a, run: echo, needs: [b]}\n"


def test_version_and_help(lg: Callable[..., Any]) -> None:
    assert lg("--version").out.strip() == f"lg, version {__version__}"
    helped = lg("--help")
    assert helped.code == 0 and "validate" in helped.out and "Exit codes" in helped.out


def test_help_does_not_import_heavy_modules() -> None:
    code = ("import sys; from lg.cli.main import run; run(['--help']); "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('litellm', 'tree_sitter', 'jsonschema', 'jinja2', 'lg.vm.qemu')]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_examples_validate(lg: Callable[..., Any]) -> None:
    examples = sorted((REPO / "pipelines").glob("*/pipeline.yaml"))
    assert len(examples) >= 3
    result = lg("validate", *examples)
    assert result.code == 0, result.err
    assert result.out.count("ok: ") == len(examples)


def test_all_files_are_reported_then_exit_2(lg: Callable[..., Any], write: Callable[..., Path]) -> None:
    good, bad = write("good.yaml", GOOD), write("bad.yaml", BAD)
    missing = good.parent / "missing.yaml"
    result = lg("validate", good, bad, missing)
    assert result.code == 2
    assert f"ok: {good}" in result.out
    assert f"{bad}:3:32: steps[0].needs[0]: unknown step 'b'" in result.err
    assert f"{missing}: file not found" in result.err
    assert "Traceback" not in result.err + result.out


def test_validate_json(lg: Callable[..., Any], write: Callable[..., Path]) -> None:
    bad = write("bad.yaml", BAD)
    result = lg("validate", "--json", bad)
    assert result.code == 2
    report = json.loads(result.out)
    assert report["ok"] is False
    (error,) = report["files"][0]["errors"]
    assert (error["line"], error["column"], error["key"]) == (3, 32, "steps[0].needs[0]")


def test_validate_writes_nothing(lg: Callable[..., Any], write: Callable[..., Path], tmp_path: Path) -> None:
    write("bad.yaml", "name: [unclosed\n")
    before = sorted(tmp_path.rglob("*"))
    assert lg("validate", tmp_path / "bad.yaml").code == 2
    assert sorted(tmp_path.rglob("*")) == before


def test_render_expands_the_matrix(lg: Callable[..., Any]) -> None:
    result = lg("render", "--json", REPO / "pipelines/matrix/pipeline.yaml")
    assert result.code == 0, result.err
    steps = json.loads(result.out)["steps"]
    assert [s["id"] for s in steps] == ["shard-fast-1", "shard-full-1", "shard-full-2", "summary"]
    assert steps[1]["env"] == {"MODE": "full"}
    assert steps[3]["needs"] == ["shard-fast-1", "shard-full-1", "shard-full-2"]
    yaml_result = lg("render", REPO / "pipelines/matrix/pipeline.yaml")
    assert yaml_result.code == 0 and "id: shard-full-2" in yaml_result.out


def test_usage_errors_exit_2(lg: Callable[..., Any]) -> None:
    assert lg("validate").code == 2
    assert lg("no-such-command").code == 2


def test_a_bug_exits_70_with_a_crash_report(lg: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    @click.command()
    def explode() -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(cli_main.COMMANDS, "explode", "tests.cli.test_cli:_EXPLODE")
    monkeypatch.setattr(sys.modules[__name__], "_EXPLODE", explode, raising=False)
    result = lg("explode")
    assert result.code == 70
    report = Path(result.err.split("traceback is in ")[1].split(";")[0])
    assert "RuntimeError: boom" in report.read_text()
    assert "Traceback" not in result.err
    report.unlink()


def test_lg_yaml_is_found_by_walking_up(lg: Callable[..., Any], write: Callable[..., Path]) -> None:
    write("lg.yaml", "hypervisor: qemu\nimage: tiny\n")
    nested = write("a/b/p.yaml", GOOD)
    result = lg("render", "--json", nested)
    assert result.code == 0, result.err
    assert json.loads(result.out)["image"] == "tiny"


def test_bad_lg_yaml_is_an_input_error(lg: Callable[..., Any], write: Callable[..., Path]) -> None:
    config = write("lg.yaml", "hypervisr: qemu\n")
    nested = write("p.yaml", GOOD)
    result = lg("render", nested)
    assert result.code == 2
    assert f"{config}:1:1: hypervisr: unknown key 'hypervisr' (did you mean 'hypervisor'?)" in result.err
