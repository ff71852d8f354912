"""A run goes on with the inputs it started with: every file it read is recorded with its digest, and
`lg resume` refuses (exit 2, naming the file) when one changed while the run waited at a gate, unless the user
accepts it with --accept-changed, which the audit log records.

No VM boots: the step waits at an explicit gate before it would run (and the pool makes nothing ahead).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lg.images.build import build_image
from lg.inputs.run_inputs import load_run_inputs
from lg.runs.store import RunStore
from tests.conftest import REPO, CliResult

PIPELINE = """\
name: bound
policy: team
profile: custom
image: tiny
steps:
  - id: deploy
    run: echo deploying > out.txt
    approve: {reason: every deploy is reviewed}
"""

Lg = Callable[..., CliResult]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image cache of this module's own: the test that edits the recipe builds a second image into it."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def project(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with its own copy of every kind of input file."""
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.delenv("LG_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lg.yaml").write_text(f"state_dir: .lg\ncache_dir: {cache}\npool: {{snapshots: false}}\n")
    for kind in ("vm", "risk", "seccomp", "apparmor"):
        (tmp_path / "profiles" / kind).mkdir(parents=True)
    (tmp_path / "images").mkdir()
    shutil.copy(REPO / "images" / "tiny.yaml", tmp_path / "images" / "tiny.yaml")
    shutil.copy(REPO / "profiles" / "seccomp" / "default.json", tmp_path / "profiles" / "seccomp" / "custom.json")
    apparmor = (REPO / "profiles" / "apparmor" / "lg-default").read_text()
    (tmp_path / "profiles" / "apparmor" / "custom").write_text(apparmor)
    profile = (REPO / "profiles" / "vm" / "default.yaml").read_text()
    profile = profile.replace("seccomp: default", "seccomp: custom").replace("apparmor: lg-default", "apparmor: custom")
    (tmp_path / "profiles" / "vm" / "custom.yaml").write_text(profile)
    (tmp_path / "profiles" / "risk" / "team.yaml").write_text("extends: default\n")
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    build_image(load_run_inputs(tmp_path / "pipeline.yaml").config, "tiny", progress=lambda line: None)
    return tmp_path


def paused_run(lg: Lg, project: Path) -> str:
    result = lg("run", project / "pipeline.yaml")
    assert result.code == 3, result.err
    found = re.search(r"lg resume (\S+)", result.err + result.out)
    assert found is not None
    return found.group(1)


EDITS: list[tuple[str, str, Callable[[str], str]]] = [
    ("risk-policy", "profiles/risk/team.yaml", lambda text: text + "thresholds: {before: red}\n"),
    ("vm-profile", "profiles/vm/custom.yaml", lambda text: text.replace("pids: 512", "pids: 256")),
    ("seccomp", "profiles/seccomp/custom.json", lambda text: json.dumps(json.loads(text), indent=1)),
    ("apparmor", "profiles/apparmor/custom", lambda text: text + "\n# reviewed\n"),
    ("image-recipe", "images/tiny.yaml", lambda text: text + "\n# reviewed\n"),
    ("lg.yaml", "lg.yaml", lambda text: text + "accelerator: tcg\n"),
]


def test_every_input_file_is_recorded_with_its_digest(lg: Lg, project: Path) -> None:
    run_id = paused_run(lg, project)
    recorded = RunStore(project / ".lg").run(run_id).inputs
    assert recorded is not None
    files = {(entry["kind"], Path(entry["path"])) for entry in recorded}
    assert all(len(entry["sha256"]) == 64 for entry in recorded)
    for kind, relative, _ in EDITS:
        assert (kind, (project / relative).resolve()) in files
    assert ("pipeline", (project / "pipeline.yaml").resolve()) in files
    parents = [Path(e["path"]).name for e in recorded if e["kind"] == "risk-policy"]
    assert parents == ["team.yaml", "default.yaml"]  # the extends chain too


def test_resume_refuses_each_changed_input_until_accepted(lg: Lg, project: Path) -> None:
    run_id = paused_run(lg, project)
    store = RunStore(project / ".lg")
    for kind, relative, edit in EDITS:
        path = project / relative
        path.write_text(edit(path.read_text()))
        refused = lg("resume", run_id)
        assert refused.code == 2, (kind, refused.err)
        assert f"{kind} {path.resolve()} changed" in refused.err, refused.err
        assert f"--accept-changed {path.resolve()}" in refused.err
        assert store.run(run_id).status == "awaiting_approval"  # nothing was claimed
        if kind == "image-recipe":  # the run needs an image built from the recipe as it is now
            not_built = lg("resume", run_id, "--accept-changed", path)
            assert not_built.code == 5 and "lg image build tiny" in not_built.err
            build_image(load_run_inputs(project / "pipeline.yaml").config, "tiny", progress=lambda line: None)
        accepted = lg("resume", run_id, "--accept-changed", relative)
        assert accepted.code == 3, (kind, accepted.err)  # it went on, to its gate again
        events = [r for r in store.audit_log.records() if r.kind == "run.inputs_accepted" and r.run_id == run_id]
        assert events[-1].data["changes"][0]["path"] == str(path.resolve())
        assert events[-1].data["changes"][0]["kind"] == kind
        assert lg("resume", run_id).code == 3  # accepted digests are the run's from now on
    assert not lg("audit", "verify").code


def test_accept_changed_names_only_files_that_changed(lg: Lg, project: Path) -> None:
    run_id = paused_run(lg, project)
    refused = lg("resume", run_id, "--accept-changed", "profiles/vm/custom.yaml")
    assert refused.code == 2 and "does not depend on that file, or it did not change" in refused.err


def test_a_changed_pipeline_cannot_be_accepted(lg: Lg, project: Path) -> None:
    run_id = paused_run(lg, project)
    pipeline = project / "pipeline.yaml"
    pipeline.write_text(pipeline.read_text().replace("deploying", "deploying!"))
    refused = lg("resume", run_id, "--accept-changed", pipeline)
    assert refused.code == 2 and "start a new run instead" in refused.err
