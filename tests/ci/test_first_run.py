"""The first run on a machine (issue #19 item 9): `lg pool prepare` builds the pool templates ahead of it (as
scripts/setup does for the shipped examples), and a lease that had to wait for a template to be built says
so, rather than "from the warm pool in 25500.9 ms". On lg.testing.fake, whose VMs are directories and which
keeps real template snapshots."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from lg.pool.key import PoolKey
from lg.pool.pool import Lease
from lg.runner.lease_wait import NOTICE, TemplateWaitNotice
from lg.runner.step_vm import lease_note
from lg.vm.api import Vm

ONE_STEP = """\
    name: first
    steps:
      - {id: hello, run: echo hello}
"""


def _with_snapshots(project: Path) -> None:
    (project / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\npool: {snapshots: true}\n")


def test_the_first_lease_says_it_built_the_template_and_the_next_one_does_not(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    _with_snapshots(fake_project)
    pipeline_file(ONE_STEP)
    first = lg("run", "pipeline.yaml")
    assert first.code == 0, first.err
    (note,) = [line for line in first.out.splitlines() if line.startswith("[hello] VM ")]
    assert "built its pool template first (" in note and "once for this image and profile" in note, note
    assert "from the warm pool" not in note
    second = lg("run", "pipeline.yaml")
    assert second.code == 0, second.err
    assert "built its pool template" not in second.out
    assert "restored from its template snapshot" in second.out or "from the warm pool" in second.out


def test_pool_prepare_builds_the_templates_before_the_first_run(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path], fake_project: Path) -> None:
    _with_snapshots(fake_project)
    pipeline_file(ONE_STEP)
    prepared = lg("pool", "prepare", "--json", "pipeline.yaml")
    assert prepared.code == 0, prepared.err
    (result,) = json.loads(prepared.out)
    assert result["outcome"] == "built" and result["steps"] == ["hello"] and result["seconds"] > 0
    again = lg("pool", "prepare", "pipeline.yaml")
    assert again.code == 0 and again.out.rstrip().endswith(": present")
    ran = lg("run", "pipeline.yaml")
    assert ran.code == 0 and "built its pool template" not in ran.out


def test_pool_prepare_without_snapshots_says_nothing_is_pooled(
        lg: Callable[..., Any], pipeline_file: Callable[[str], Path]) -> None:
    pipeline_file(ONE_STEP)  # the fixture's lg.yaml turns snapshots off
    result = lg("pool", "prepare", "pipeline.yaml")
    assert result.code == 0 and "not pooled (snapshots are off" in result.out


def test_a_warm_vm_made_while_the_lease_waited_is_not_called_warm() -> None:
    vm = cast(Vm, SimpleNamespace(id="vm-1", accelerator="tcg"))  # all a lease note reads of its VM
    key = PoolKey("fake", "d" * 64, 1, 256, "tcg", "p" * 64)
    waited = Lease(vm, key, "warm", 12.5, 1.25, None, made_while_waiting=True)
    assert lease_note(waited).startswith("VM vm-1 made for this step while it waited 12.5s (in 1.25s)")
    ready = Lease(vm, key, "warm", 0.0012, 1.25, None)
    assert "from the warm pool in 1.2 ms" in lease_note(ready)


def _notices(root: Path, hold: float) -> list[str]:
    """What a lease that takes `hold` seconds is told under TemplateWaitNotice (0.1 s in)."""
    notes: list[str] = []
    said = threading.Event()

    def note(text: str) -> None:
        notes.append(text)
        said.set()

    with TemplateWaitNotice(root, note, after=0.1):
        said.wait(hold)  # the lease, waiting: it ends early once the notice is out
    time.sleep(0.2)  # past the point a late timer would fire: nothing may come after the block
    return notes


def test_a_lease_waiting_for_a_template_build_says_so_once(tmp_path: Path) -> None:
    root = tmp_path / "snapshots"
    root.mkdir()
    assert _notices(root, 0.5) == []  # nothing is being built: a slow lease is not explained by a build
    dead = root / ".tmp-0123456789ab-999999999-aa"  # left by a builder that died: not a build in progress
    dead.mkdir()
    assert _notices(root, 0.5) == []
    (root / f".tmp-0123456789ab-{os.getpid()}-bb").mkdir()  # a live builder's staging directory
    assert _notices(root, 5.0) == [NOTICE]
    assert "lg pool prepare" in NOTICE
