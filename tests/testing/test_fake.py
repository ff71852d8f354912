"""lg.testing.fake against the backend conformance suite, and what is particular to it: guest paths mapped into
its directory, a scripted exec, honest confinement reports, and no way for lg's own requests to leave it."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lg.testing import conformance
from lg.testing.fake import CAPABILITIES, FakeHypervisor, FakeVm
from lg.testing.images import stand_in_image
from lg.vm.api import AgentFailure, ExecRequest, ExecResult, GuestCrashed, Hypervisor, SnapshotBackend, Vm, VmSpec
from lg.vm.base import file_change
from tests.vm.conftest import ImageFiles

REPO = Path(__file__).resolve().parents[2]
IMAGE = ImageFiles("tiny", "d" * 64, Path("/nonexistent/vmlinux"), Path("/nonexistent/initrd"), None, ())


@pytest.fixture(scope="module")
def shared_vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    hypervisor = FakeHypervisor(tmp_path_factory.mktemp("fake-vms"))
    with hypervisor.boot(VmSpec(image=IMAGE)) as vm:
        yield vm


@pytest.fixture
def spec(tmp_path: Path) -> VmSpec:
    return VmSpec(image=IMAGE, run_dir=tmp_path / "vms", hostname="lg-test")


@pytest.mark.parametrize("check", conformance.vm_params(CAPABILITIES))
def test_conformance(shared_vm: Vm, check: conformance.VmCheck, tmp_path: Path) -> None:
    check(shared_vm, tmp_path)


@pytest.mark.parametrize("check", conformance.backend_params(CAPABILITIES))
def test_backend_conformance(spec: VmSpec, check: conformance.BackendCheck) -> None:
    check(FakeHypervisor(), spec)


def test_the_fake_is_a_backend_with_snapshots(tmp_path: Path) -> None:
    hypervisor: Hypervisor = FakeHypervisor(tmp_path)  # mypy checks the protocol here
    assert isinstance(hypervisor, SnapshotBackend)
    probe = hypervisor.probe()
    assert probe.can_run and probe.auto_accelerator == "none" and "isolates nothing" in probe.problems[0].message


def test_lg_s_guest_paths_land_in_the_vm_s_directory(spec: VmSpec, tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "in.txt").write_text("in\n")
    with FakeHypervisor().boot(spec) as vm:
        vm.put_tree(tmp_path / "ws", "/workspace")
        result = vm.exec(ExecRequest(
            argv=("/bin/sh", "-c", 'cp in.txt "$HOME/copy" && echo "k=v" > "$LG_OUTPUT" && mktemp > made-at'),
            cwd="/workspace", mkdirs=("/run/lg",),
            env={"HOME": "/workspace", "LG_OUTPUT": "/run/lg/output", "PLAIN": "/bin/sh"}))
        assert result.ok
        assert vm.host_path("/workspace/copy").read_text() == "in\n"
        assert vm.host_path("/run/lg/output").read_text() == "k=v\n"
        assert Path(vm.host_path("/workspace/made-at").read_text().strip()).parent == vm.host_path("/tmp")
        assert {c.path for c in vm.changes("/workspace")} == {"copy", "made-at"}
    assert not vm.directory.exists()


@pytest.mark.parametrize("guest", ["relative/path", "/workspace/../../etc", "/tmp/out/escape"])
def test_lg_cannot_make_the_fake_reach_outside_its_directory(spec: VmSpec, tmp_path: Path, guest: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with FakeHypervisor().boot(spec) as vm:
        vm.host_path("/tmp/out").mkdir()
        (vm.host_path("/tmp/out") / "escape").symlink_to(outside)  # planted by a command
        for request in (lambda: vm.put_tree(tmp_path / "outside", guest), lambda: vm.changes(guest),
                        lambda: vm.exec(ExecRequest(script="touch x", cwd=guest)),
                        lambda: vm.exec(ExecRequest(script="true", mkdirs=(f"{guest}/made",)))):
            with pytest.raises(AgentFailure):
                request()
    assert list(outside.iterdir()) == []


def test_confinement_is_reported_as_not_enforced(spec: VmSpec) -> None:
    with FakeHypervisor().boot(spec) as vm:
        result = vm.exec(ExecRequest(script="id -u", uid=1000, gid=1000, confine={"no_new_privs": True}))
        assert result.ok and result.confinement is not None
        assert result.confinement["enforced"] is False and "not applied" in result.confinement["reason"]
        bad = ExecRequest(script="true", confine={"keep_caps": ["CAP_NOT_A_THING"]})
        with pytest.raises(AgentFailure, match="unknown capability"):  # refused as the agent refuses it
            vm.exec(bad)


def test_a_handler_scripts_results_and_can_crash_the_vm(spec: VmSpec) -> None:
    def handler(vm: FakeVm, request: ExecRequest, on_output: object) -> ExecResult | None:
        if request.script == "crash":
            raise GuestCrashed(f"VM {vm.id}: scripted crash")
        if request.script == "scripted":
            vm.host_path("/tmp/written-by-handler").write_text("x")
            return ExecResult(exit_code=3, signal=None, timed_out=False, duration=0.0)
        return None

    hypervisor = FakeHypervisor(handler=handler)
    with hypervisor.boot(spec) as vm:
        assert vm.exec(ExecRequest(script="scripted")).exit_code == 3
        assert vm.host_path("/tmp/written-by-handler").exists()
        assert vm.exec(ExecRequest(script="exit 4")).exit_code == 4  # not scripted: run for real
        with pytest.raises(GuestCrashed, match="scripted crash"):
            vm.exec(ExecRequest(script="crash"))
    assert [r.script for r in vm.executed] == ["scripted", "exit 4", "crash"]
    assert hypervisor.booted == [vm]


def test_changes_are_what_the_guest_agent_reports(spec: VmSpec, tmp_path: Path) -> None:
    """The same records as the agent's own code computes them, through the host's validation."""
    from lg.guest import manifest

    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.txt").write_text("a\n")
    with FakeHypervisor().boot(spec) as vm:
        vm.put_tree(tmp_path / "ws", "/workspace")
        before = manifest.take(str(vm.host_path("/workspace")))
        assert vm.exec(ExecRequest(script="echo b > b.txt; chmod 700 a.txt", cwd="/workspace")).ok
        expected = [file_change(r) for r in manifest.diff(before, manifest.take(str(vm.host_path("/workspace"))))]
        assert vm.changes("/workspace") == expected and [c.kind for c in expected] == ["modified", "created"]


def test_a_restored_clone_keeps_the_baseline_of_its_template(spec: VmSpec, tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.txt").write_text("a\n")
    hypervisor = FakeHypervisor()
    with hypervisor.boot(spec) as vm:
        vm.put_tree(tmp_path / "ws", "/workspace")
        hypervisor.save_snapshot(vm, tmp_path / "snap")
        with pytest.raises(Exception, match="paused"):
            vm.exec(ExecRequest(script="true"))
    with hypervisor.restore(tmp_path / "snap", spec) as clone:
        assert clone.changes("/workspace") == []
        assert clone.exec(ExecRequest(script="rm a.txt", cwd="/workspace")).ok
        assert [(c.path, c.kind) for c in clone.changes("/workspace")] == [("a.txt", "deleted")]


def test_the_stand_in_image_is_what_require_image_finds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lg.config.project import load_project_config
    from lg.images.store import require_image

    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    config = load_project_config(tmp_path)
    image = stand_in_image(config, "tiny")
    assert require_image(config, "tiny") == image


def test_lg_s_runtime_code_never_imports_lg_testing() -> None:
    offenders = []
    for path in (REPO / "lg").rglob("*.py"):
        if "testing" in path.relative_to(REPO / "lg").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}: {name}" for name in names if name.startswith("lg.testing")]
    assert offenders == []


def test_the_fake_runs_nothing_as_another_user() -> None:
    """The fake never switches user, even when the tests run as root (it cannot confine what it runs)."""
    with FakeHypervisor().boot(VmSpec(image=IMAGE)) as vm:
        out = bytearray()
        vm.exec(ExecRequest(script="id -u", uid=1000, gid=1000), lambda _s, chunk: out.extend(chunk))
    assert out.decode().strip() == str(os.getuid())
