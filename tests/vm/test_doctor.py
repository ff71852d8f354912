"""`lg doctor`, through the real CLI entry point, on hosts made to lack one thing or another."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult
from tests.vm.conftest import ImageFiles

TINY = ImageFiles("tiny", "sha256:" + "ab" * 32, Path("/nonexistent/vmlinux"), Path("/nonexistent/initrd"),
                  None, ("console=ttyS0",))


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fake_store(monkeypatch: pytest.MonkeyPatch, images: list[ImageFiles]) -> None:
    module = types.ModuleType("lg.images.store")

    class ImageStore:
        def __init__(self, cache_dir: Path) -> None:
            self.cache_dir = cache_dir

        def list(self) -> list[ImageFiles]:
            return images

    module.ImageStore = ImageStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lg.images.store", module)


def checks(result: CliResult) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in json.loads(result.out)["checks"]}


def test_vms_can_run_with_qemu_and_an_image(
    host: Path, monkeypatch: pytest.MonkeyPatch, lg: Callable[..., CliResult]
) -> None:
    fake_store(monkeypatch, [TINY])
    result = lg("doctor", "--json", "--no-boot")
    report = json.loads(result.out)
    assert result.code == 0, result.out
    assert report["can_run_vms"] and report["accelerator"] in ("kvm", "tcg")
    assert checks(result)["images"]["status"] == "ok"
    assert checks(result)["state_dir"]["status"] == "ok"


def test_without_qemu_doctor_says_how_to_install_and_exits_5(
    host: Path, monkeypatch: pytest.MonkeyPatch, lg: Callable[..., CliResult]
) -> None:
    fake_store(monkeypatch, [TINY])
    monkeypatch.setenv("PATH", str(host / "empty-bin"))
    result = lg("doctor", "--json", "--no-boot")
    assert result.code == 5
    qemu = checks(result)["qemu"]
    assert qemu["status"] == "fail" and "apt-get install qemu-system-x86" in qemu["fix"]


def test_without_images_doctor_exits_5_and_names_the_build_command(
    host: Path, monkeypatch: pytest.MonkeyPatch, lg: Callable[..., CliResult]
) -> None:
    fake_store(monkeypatch, [])
    result = lg("doctor", "--no-boot")
    assert result.code == 5
    assert "fix: lg image build tiny" in result.out
    assert "VMs cannot run on this host yet" in result.out


def test_unwritable_state_dir_is_reported(
    host: Path, monkeypatch: pytest.MonkeyPatch, lg: Callable[..., CliResult]
) -> None:
    fake_store(monkeypatch, [TINY])
    blocker = host / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LG_STATE_DIR", str(blocker / "state"))
    state = checks(lg("doctor", "--json", "--no-boot"))["state_dir"]
    assert state["status"] == "fail" and "LG_STATE_DIR" in state["fix"]


def test_a_cached_kvm_verdict_is_reported(
    host: Path, monkeypatch: pytest.MonkeyPatch, lg: Callable[..., CliResult]
) -> None:
    from lg.vm import qemu

    fake_store(monkeypatch, [TINY])
    monkeypatch.setattr(qemu.host, "kvm_device_status", lambda: (True, "/dev/kvm opens"))
    from lg.config.project import load_project_config

    hypervisor = qemu.QemuHypervisor(load_project_config(host))  # the verdict is host-wide: in the cache dir
    qemu.store_verdict(hypervisor.verdict_path, qemu.KvmVerdict(False, "it hung", hypervisor.fingerprint()))
    result = lg("doctor", "--json")
    kvm = checks(result)["kvm"]
    assert kvm["status"] == "warn" and "it hung" in kvm["detail"]
    assert json.loads(result.out)["accelerator"] == "tcg"
