"""Artifacts (globs, `lg artifacts`, delivery into a later step's VM) and the step cache (`cache:`), through the
real engine on the fake backend; tests/runner/test_run_vm.py has the real-VM case."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lg.errors import ExitCode, StepFailed
from lg.model import StepCacheLimits
from lg.runner.globs import matches, select
from lg.runner.step_cache import StepCache, hash_files
from lg.testing.fake import FakeVm
from lg.vm.api import ExecRequest, ExecResult
from tests.runner import test_engine_fake
from tests.runner.test_engine_fake import Project

engine_project = test_engine_fake.project  # the engine tests' project fixture, under this name here

REPO = Path(__file__).resolve().parents[2]


def lg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lg", *args], cwd=root, capture_output=True, text=True,
                          check=False, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


# --- globs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("dist/*.whl", "dist/a.whl", True),
    ("dist/*.whl", "dist/sub/a.whl", False),
    ("dist", "dist/sub/a.whl", True),  # a directory takes what is below it
    ("dist/", "dist/a", True),
    ("**/*.xml", "a/b/report.xml", True),
    ("**/*.xml", "report.xml", True),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("*.txt", "a/b.txt", False),
    ("[ab].txt", "a.txt", True),
    ("[!ab].txt", "a.txt", False),
    ("f?.c", "f1.c", True),
    ("f?.c", "f/.c", False),
    ("a+b(c).txt", "a+b(c).txt", True),  # regex characters are literal
])
def test_glob_matching(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern, path) is expected


def test_hash_files_changes_with_content_and_is_empty_without_a_match(tmp_path: Path) -> None:
    (tmp_path / "lock.txt").write_text("a==1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "lock.txt").write_text("b==2\n")
    never: list[str] = []
    first = hash_files(tmp_path, ["**/lock.txt"], never.__contains__)
    assert len(first) == 64 and first == hash_files(tmp_path, ["**/lock.txt"], never.__contains__)
    (tmp_path / "sub" / "lock.txt").write_text("b==3\n")
    assert hash_files(tmp_path, ["**/lock.txt"], never.__contains__) != first
    assert hash_files(tmp_path, ["lock.txt"], never.__contains__) != first  # only the top one
    assert hash_files(tmp_path, ["*.nothing"], never.__contains__) == ""
    assert select(["*.txt"], ["a.txt", "b.bin"]) == ["a.txt"]


# --- artifacts -----------------------------------------------------------------------------------------


def test_artifact_globs_keep_what_matched_and_lg_artifacts_lists_and_copies_them(engine_project: Project) -> None:
    outcome = engine_project.run("""\
        name: artifacts
        steps:
          - id: build
            run: |
              mkdir -p dist/sub
              echo wheel-a > dist/a.whl
              echo wheel-b > dist/b.whl
              echo notes > dist/sub/notes.txt
            artifacts: ["dist/*.whl", "reports/**/*.xml", keep.txt]
        """)
    assert outcome.exit_code == ExitCode.OK
    assert any("'reports/**/*.xml' matched no file" in line for line in engine_project.echoed)
    listed = lg(engine_project.root, "artifacts", outcome.run.id, "--json")
    assert listed.returncode == 0, listed.stderr
    paths = {entry["path"]: entry for entry in json.loads(listed.stdout)["artifacts"]}
    assert sorted(paths) == ["dist/a.whl", "dist/b.whl", "keep.txt"]  # keep.txt: unchanged, still kept
    out = engine_project.root.parent / "out"
    copied = lg(engine_project.root, "artifacts", outcome.run.id, "build", "--out", str(out))
    assert copied.returncode == 0, copied.stderr
    assert (out / "build" / "dist" / "a.whl").read_text() == "wheel-a\n"
    assert lg(engine_project.root, "artifacts", outcome.run.id, "nope").returncode == ExitCode.INVALID_INPUT


def test_a_named_artifact_the_step_did_not_leave_fails_the_step(engine_project: Project) -> None:
    with pytest.raises(StepFailed):
        engine_project.run("""\
            name: missing
            steps:
              - {id: build, run: "true", artifacts: [dist/app.whl]}
            """)
    (run,) = engine_project.store.runs(1)
    step = engine_project.store.step(run.id, "build")
    assert str(step.status) == "failed" and "artifact 'dist/app.whl': not found" in (step.detail or "")


def test_artifacts_of_a_needed_step_arrive_in_the_later_step_s_vm_not_its_workspace(engine_project: Project) -> None:
    received: dict[str, str] = {}

    def look(vm: FakeVm, request: ExecRequest, attempt: int) -> ExecResult | None:
        if request.env.get("LG_STEP_ID") == "test":
            for name in ("/artifacts/build/dist/app.whl", "/opt/shards/pack-x/out-x.tar",
                         "/opt/shards/pack-y/out-y.tar"):
                path = vm.host_path(name)
                received[name] = path.read_text() if path.is_file() else "MISSING"
        return None

    engine_project.steps.script = look
    outcome = engine_project.run("""\
        name: pass-artifacts
        steps:
          - id: build
            run: mkdir -p .tmp-dist dist && echo app > dist/app.whl
            artifacts: [dist/]
          - id: pack
            matrix: {flavour: [x, y]}
            run: echo "{{ matrix.flavour }}" > "out-{{ matrix.flavour }}.tar"
            artifacts: ["out-*.tar"]
          - id: test
            needs: [build, pack]
            run: echo tested > tested.txt
            artifacts_from: {build: null, pack: /opt/shards}
        """)
    assert outcome.exit_code == ExitCode.OK, engine_project.echoed
    assert received == {"/artifacts/build/dist/app.whl": "app\n", "/opt/shards/pack-x/out-x.tar": "x\n",
                        "/opt/shards/pack-y/out-y.tar": "y\n"}
    changes = {c["path"] for c in engine_project.store.step(outcome.run.id, "test").changes}
    assert changes == {"tested.txt"}


# --- the step cache ------------------------------------------------------------------------------------


CACHED = """\
    name: cached
    steps:
      - id: deps
        run: |
          if [ -f .deps/lib.txt ]; then echo "from cache: $(cat .deps/lib.txt)" > used.txt
          else mkdir -p .deps && echo "built $(cat lock.txt)" > .deps/lib.txt && echo fresh > used.txt; fi
        cache: {key: "deps-{{ hashFiles('lock.txt') }}", paths: [.deps]}
    """


def test_a_cache_is_saved_after_success_restored_next_run_and_never_an_effect(engine_project: Project) -> None:
    (engine_project.root / "lock.txt").write_text("a==1\n")
    first = engine_project.run(CACHED)
    assert first.exit_code == ExitCode.OK
    assert (engine_project.root / "used.txt").read_text() == "fresh\n"
    assert not (engine_project.root / ".deps").exists()  # the cache's, not the workspace's
    assert ".deps/lib.txt" not in {c["path"] for c in engine_project.store.step(first.run.id, "deps").changes}
    entries = StepCache(engine_project.root / ".lg" / "cache").entries()
    assert [e.paths for e in entries] == [(".deps",)] and entries[0].key.startswith("deps-")

    second = engine_project.run(CACHED)
    assert second.exit_code == ExitCode.OK
    assert (engine_project.root / "used.txt").read_text() == "from cache: built a==1\n"
    assert any("restored 1 file(s)" in line for line in engine_project.echoed)

    (engine_project.root / "lock.txt").write_text("a==2\n")  # a new lockfile: a new key, a miss
    third = engine_project.run(CACHED)
    assert third.exit_code == ExitCode.OK and (engine_project.root / "used.txt").read_text() == "fresh\n"
    assert len(StepCache(engine_project.root / ".lg" / "cache").entries()) == 2


def test_a_cache_is_not_restored_under_another_vm_profile(engine_project: Project) -> None:
    (engine_project.root / "lock.txt").write_text("a==1\n")
    assert engine_project.run(CACHED).exit_code == ExitCode.OK
    other = CACHED.replace("      - id: deps\n", "      - id: deps\n        profile: build\n")
    assert engine_project.run(other).exit_code == ExitCode.OK
    assert (engine_project.root / "used.txt").read_text() == "fresh\n"  # same key, other scope: a miss
    scopes = {e.scope for e in StepCache(engine_project.root / ".lg" / "cache").entries()}
    assert len(scopes) == 2


def test_cache_limits_prune_and_rm(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "big.bin").write_bytes(b"x" * (2 << 20))
    store = StepCache(tmp_path / "cache", StepCacheLimits(max_entry_mib=1, max_total_mib=10))
    assert "over step_cache.max_entry_mib" in str(store.save("k", "s", tree, ("d",)))
    assert store.entries() == [] and list(store.blobs.glob("*.tar")) == []
    roomy = StepCache(tmp_path / "cache", StepCacheLimits(max_entry_mib=10, max_total_mib=5))
    for number in range(3):
        (tree / "d" / "big.bin").write_bytes(bytes([number]) * (2 << 20))
        roomy.save(f"k{number}", "s", tree, ("d",))
        time.sleep(0.01)  # distinct last-used times, so least-recently-used is well defined
    assert [e.key for e in roomy.entries()] == ["k2", "k1"]  # k0 pruned past 5 MiB
    assert len(list(roomy.blobs.glob("*.tar"))) == 2
    assert [e.key for e in roomy.remove("k1")] == ["k1"] and [e.key for e in roomy.entries()] == ["k2"]
    assert roomy.prune(older_than=0) and roomy.entries() == []


def test_lg_cache_commands(engine_project: Project) -> None:
    (engine_project.root / "lock.txt").write_text("a==1\n")
    assert engine_project.run(CACHED).exit_code == ExitCode.OK
    listed = lg(engine_project.root, "cache", "ls", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1
    assert lg(engine_project.root, "cache", "rm").returncode == ExitCode.INVALID_INPUT
    assert lg(engine_project.root, "cache", "rm", "no-such-key").returncode == ExitCode.INVALID_INPUT
    key = json.loads(listed.stdout)[0]["key"]
    assert lg(engine_project.root, "cache", "rm", key).returncode == 0
    assert lg(engine_project.root, "cache", "prune", "--max-size", "0").returncode == 0
    assert json.loads(lg(engine_project.root, "cache", "ls", "--json").stdout) == []
