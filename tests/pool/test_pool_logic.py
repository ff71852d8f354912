"""Pool bookkeeping, wire format and metrics, without VMs. The hypervisor is a stand-in that makes inert VM
objects (the machine has real ones, but these tests are about queueing and counting, not about VMs; the
tests in tests/vm/test_pool.py drive the same pool with real VMs)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lg.model import PoolSettings
from lg.pool.key import PoolKey, key_for, profile_digest
from lg.pool.metrics import PoolMetrics, prometheus_collector
from lg.pool.pool import PoolExhausted, WarmPool, _renice_autogroup
from lg.pool.wire import exec_from_json, exec_to_json, spec_from_json, spec_to_json
from lg.vm.api import ExecRequest, VmSpec
from tests.vm.conftest import ImageFiles

_ids = itertools.count()


class InertVm:
    def __init__(self) -> None:
        self.id = f"vm-{next(_ids)}"
        self.destroyed = False
        self.accelerator = "tcg"
        self.identities: list[str] = []

    def set_identity(self, hostname: str, machine_id: str) -> dict[str, Any]:
        self.identities.append(hostname)
        return {"hostname": hostname, "machine_id": machine_id}

    def destroy(self) -> None:
        self.destroyed = True


class InertHypervisor:
    name = "inert"

    def __init__(self) -> None:
        self.booted: list[InertVm] = []
        self.specs: list[VmSpec] = []

    def boot(self, spec: VmSpec) -> InertVm:
        vm = InertVm()
        self.booted.append(vm)
        self.specs.append(spec)
        return vm


@pytest.fixture
def spec(tmp_path: Path) -> VmSpec:
    for name in ("vmlinux", "initrd"):
        (tmp_path / name).write_bytes(b"x")
    image = ImageFiles("tiny", "d" * 64, tmp_path / "vmlinux", tmp_path / "initrd", None, ("console=ttyS0",))
    return VmSpec(image=image, hostname="lg-build")


def pool_of(hypervisor: InertHypervisor, **settings: Any) -> WarmPool:
    return WarmPool(lambda name: hypervisor, PoolSettings(**settings), None)  # type: ignore[arg-type,return-value]


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_expected_leases_are_made_ahead_within_max_idle_and_each_vm_is_leased_once(spec: VmSpec) -> None:
    hypervisor = InertHypervisor()
    key = key_for("inert", spec, profile_digest({}))
    with pool_of(hypervisor, max_idle=2, max_active=8) as pool:
        pool.expect(key, spec, 5)
        wait_for(lambda: pool.status()["idle"] == 2)  # five announced, two kept ready
        leased = [pool.lease(key, spec) for _ in range(5)]
        assert [lease.source for lease in leased[:2]] == ["warm", "warm"]
        assert len({lease.vm.id for lease in leased}) == 5
        assert all(lease.vm.identities == ["lg-build"] for lease in leased)  # type: ignore[attr-defined]
        for lease in leased:
            lease.release()
        wait_for(lambda: all(vm.destroyed for vm in hypervisor.booted))
        time.sleep(0.1)
        assert pool.status()["idle"] == 0  # nothing more announced: nothing more made
    assert len(hypervisor.booted) == 5


def test_a_lease_queues_at_max_active_until_a_release_or_its_deadline(spec: VmSpec) -> None:
    hypervisor = InertHypervisor()
    key = key_for("inert", spec, profile_digest({}))
    with pool_of(hypervisor, max_idle=0, max_active=1) as pool:
        first = pool.lease(key, spec)
        with pytest.raises(PoolExhausted, match="max_active"):
            pool.lease(key, spec, timeout=0.2)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(pool.lease(key, spec, timeout=10)))
        waiter.start()
        wait_for(lambda: pool.status()["queued_leases"] == 1)
        first.release()
        waiter.join(timeout=10)
        assert got and got[0].vm.id != first.vm.id
        got[0].release()
        assert pool.status()["metrics"]["failures"] == {"lease_timeout": 1}


def test_a_network_allow_list_is_part_of_the_key_and_a_lease_boots_its_own_spec(spec: VmSpec) -> None:
    from dataclasses import replace

    from lg.vm.api import EgressRule, NetworkSpec

    hypervisor = InertHypervisor()
    networked = replace(spec, network=NetworkSpec((EgressRule("192.0.2.7/32", "tcp", (443,)),)))
    digest = profile_digest({"pids": 5})  # the same confinement: only the network differs
    plain_key, net_key = key_for("inert", spec, digest), key_for("inert", networked, digest)
    assert plain_key != net_key
    with pool_of(hypervisor, max_idle=0, max_active=4) as pool:
        pool.lease(net_key, networked).release()
        pool.lease(plain_key, spec).release()
    assert [booted.network is not None for booted in hypervisor.specs] == [True, False]


def test_close_destroys_idle_vms(spec: VmSpec) -> None:
    hypervisor = InertHypervisor()
    key = key_for("inert", spec, profile_digest({}))
    pool = pool_of(hypervisor, max_idle=2, max_active=4)
    pool.expect(key, spec, 2)
    wait_for(lambda: pool.status()["idle"] == 2)
    pool.close()
    assert all(vm.destroyed for vm in hypervisor.booted)


def test_specs_keys_and_requests_survive_the_wire(spec: VmSpec, tmp_path: Path) -> None:
    back = spec_from_json(json.loads(json.dumps(spec_to_json(spec))), tmp_path / "vms")
    assert (back.image.digest, back.image.kernel, back.vcpus, back.memory_mib, back.hostname) == (
        spec.image.digest, spec.image.kernel, spec.vcpus, spec.memory_mib, spec.hostname)
    key = key_for("qemu", spec, profile_digest({"pids": 5}))
    assert PoolKey.from_json(json.loads(json.dumps(key.to_json()))) == key
    request = ExecRequest(argv=("/bin/true",), uid=1000, gid=1000, timeout=5, confine={"pids": 5})
    assert exec_from_json(json.loads(json.dumps(exec_to_json(request)))) == request
    assert profile_digest({"a": 1, "b": 2}) == profile_digest({"b": 2, "a": 1})


def test_metrics_give_percentiles_and_prometheus_text() -> None:
    from prometheus_client import generate_latest
    from prometheus_client.registry import CollectorRegistry

    metrics = PoolMetrics()
    for seconds in (0.2, 0.3, 0.4, 5.0):
        metrics.spawned("restore", seconds)
    metrics.leased("warm", 0.001)
    metrics.leased("cold", 4.0)
    summary = metrics.to_json()
    assert summary["spawn_seconds"]["restore"] == {"count": 4, "mean": 1.475, "p50": 0.4, "p95": 5.0}
    assert summary["from_pool_ratio"] == 0.5
    registry = CollectorRegistry()
    registry.register(prometheus_collector(metrics, lambda: [("lg_pool_idle_vms", "idle", [({"key": "k"}, 2)])]))
    text = generate_latest(registry).decode()
    assert 'lg_pool_idle_vms{key="k"} 2.0' in text
    assert 'lg_pool_leases_total{source="warm"} 1.0' in text
    assert 'lg_pool_spawn_seconds_bucket{kind="restore",le="0.25"} 1.0' in text
    assert 'lg_pool_spawn_seconds_count{kind="restore"} 4.0' in text


def test_pool_commands_without_a_daemon(lg: Callable[..., Any], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LG_POOL_SOCKET", str(tmp_path / "none.sock"))
    monkeypatch.chdir(tmp_path)
    shown = lg("pool", "status", "--json")
    assert shown.code == 0 and json.loads(shown.out)["daemon"] is None
    assert "no pool daemon answers" in lg("pool", "status").out
    bad = lg("pool", "serve", "--metrics", "not an address")
    assert bad.code == 2 and "--metrics 'not an address': expected [HOST]:PORT" in bad.err
    (tmp_path / "file").write_text("not a directory")
    unusable = lg("pool", "serve", "--socket", tmp_path / "file" / "pool.sock")
    assert unusable.code == 5 and "cannot serve the pool on" in unusable.err


def test_a_withdrawn_announcement_stops_the_refill(spec: VmSpec) -> None:
    hypervisor = InertHypervisor()
    key = key_for("inert", spec, profile_digest({}))
    with pool_of(hypervisor, max_idle=2, max_active=4) as pool:
        pool.expect(key, spec, 3)
        pool.expect(key, spec, -5)  # more than announced: nothing is expected, never a negative count
        assert pool.status()["keys"][0]["expected"] == 0 and pool.status()["keys"][0]["wanted"] == 0


def test_prune_removes_templates_of_gone_images_and_old_formats(tmp_path: Path) -> None:
    from lg.pool.templates import FORMAT, MANIFEST, TemplateStore, prune_templates

    for name, image, fmt in (("a" * 64, "kept", FORMAT), ("b" * 64, "gone", FORMAT), ("c" * 64, "kept", 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ram").write_bytes(b"x")
        (tmp_path / name / MANIFEST).write_text(json.dumps(
            {"format": fmt, "image_digest": image, "accelerator": "tcg", "files": {"ram": {"size": 1}}}))
    removed = prune_templates(tmp_path, {"kept"})
    assert sorted(entry["digest"][0] for entry in removed) == ["b", "c"]
    assert [entry["digest"][0] for entry in TemplateStore.list_at(tmp_path)] == ["a"]


@pytest.mark.parametrize(("ours", "theirs", "renices"), [
    ("/autogroup-7 nice 0\n", "/autogroup-9 nice 10\n", True),   # the VMM is a session of its own
    ("", "/autogroup-9 nice 10\n", True),                        # lg in the root autogroup (as in CI)
    ("/autogroup-7 nice 0\n", "/autogroup-7 nice 0\n", False),   # the VMM shares lg's session
    ("/autogroup-7 nice 0\n", "", False),                        # the VMM in the root autogroup: never touched
    ("", None, False),                                           # the VMM is gone
])
def test_a_lease_renices_only_the_vmm_s_own_autogroup(tmp_path: Path, ours: str, theirs: str | None,
                                                      renices: bool) -> None:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "autogroup").write_text(ours)
    (tmp_path / "42").mkdir()
    if theirs is not None:
        (tmp_path / "42" / "autogroup").write_text(theirs)
    _renice_autogroup(42, 0, proc=tmp_path)
    after = (tmp_path / "42" / "autogroup").read_text() if theirs is not None else None
    assert (after == "0") is renices
