"""Egress allow-lists in a real guest: the allowed test host answers, every other destination is refused.

The test hosts live in network namespaces this test creates (a veth pair each, addresses in 10.215.0.0/24 that
nothing outside this machine uses), so no packet of this test is meant for any other machine: the denied
destinations are test hosts too, listening on the very ports the guest is refused, so a denial cannot be
the accident of nobody answering.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from lg.runs.store import RunStore
from lg.security.profile import load_vm_profile_file
from lg.vm.api import EgressRule, ExecRequest, NetworkSpec, Vm, VmSpec
from lg.vm.network import NETNS_DIR, NETNS_PREFIX

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nftables"),
]

DEFAULT = load_vm_profile_file(Path(__file__).resolve().parents[2] / "profiles" / "vm" / "default.yaml")

SERVER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(16)
    while True:
        c, _ = s.accept(); c.sendall(f"HELLO {sys.argv[1]}:{port}\\n".encode()); c.close()
for port in (8080, 8081):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True); threading.Event().wait()
"""

PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            print(target, "->", s.recv(100).decode().strip())
    except OSError as e:
        print(target, "-> refused:", e.strerror or e)
"""


@dataclass(frozen=True)
class NetHost:
    netns: str
    host_link: str
    address: str


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def test_hosts() -> Iterator[list[NetHost]]:
    """Two listening hosts, each in a namespace of its own, routed from the host through a veth pair."""
    hosts, servers = [], []
    tag = os.getpid() % 10000
    try:
        for number in range(2):
            base = 4 * number
            host = NetHost(f"lgtest-{tag}-{number}", f"lgt{tag}-{number}", f"10.215.0.{base + 2}")
            hosts.append(host)
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.host_link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("addr", "add", f"10.215.0.{base + 1}/30", "dev", host.host_link)
            _ip("link", "set", host.host_link, "up")
            for args in (("addr", "add", f"{host.address}/30", "dev", "eth0"), ("link", "set", "eth0", "up"),
                         ("link", "set", "lo", "up")):
                _ip("netns", "exec", host.netns, "ip", *args)
            server = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, "-c", SERVER,
                                       host.address], stdout=subprocess.PIPE, text=True)
            servers.append(server)
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield hosts
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for host in hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)


def probe(vm: Vm, *targets: str) -> dict[str, str]:
    output: list[bytes] = []
    request = ExecRequest(argv=("python3", "-c", PROBE, *targets), uid=1000, gid=1000, timeout=60,
                          confine=DEFAULT.confinement())  # as a step runs: seccomp, AppArmor, no caps
    result = vm.exec(request,
                     on_output=lambda stream, chunk: output.append(chunk))
    assert result.ok, b"".join(output)
    lines = b"".join(output).decode().splitlines()
    return dict(line.split(" -> ", 1) for line in lines if " -> " in line)


def lg_namespaces() -> set[str]:
    return {path.name for path in NETNS_DIR.glob(f"{NETNS_PREFIX}*")} if NETNS_DIR.is_dir() else set()


def test_only_the_allow_list_is_reachable(hypervisor: object, spec: VmSpec, test_hosts: list[NetHost]) -> None:
    allowed, other = test_hosts
    network = NetworkSpec(allow=(EgressRule(f"{allowed.address}/32", "tcp", (8080,)),),
                          hosts=(("registry.test", allowed.address),))
    before = lg_namespaces()
    with hypervisor.boot(replace(spec, network=network)) as vm:  # type: ignore[attr-defined]
        seen = probe(vm, "registry.test:8080", f"{allowed.address}:8081", f"{other.address}:8080",
                     "10.213.0.1:53", "unlisted.example:443")
        state = vm.network_state
        created = lg_namespaces() - before
    assert seen["registry.test:8080"] == f"HELLO {allowed.address}:8080"  # by its pinned name, through the filter
    assert seen[f"{allowed.address}:8081"].startswith("refused")  # the right host, a port not on the list
    assert seen[f"{other.address}:8080"].startswith("refused")  # a listening host not on the list
    assert seen["10.213.0.1:53"].startswith("refused")  # no DNS server to ask (or to leak through)
    assert seen["unlisted.example:443"].startswith("refused")  # and no name outside the list resolves
    assert state is not None and state["mode"] == "allow-list" and state["denied_attempts"] >= 3
    assert len(created) == 1 and not created & lg_namespaces()  # the VM's namespace went with the VM


def test_the_same_hosts_are_unreachable_without_an_allow_list(hypervisor: object, spec: VmSpec,
                                                             test_hosts: list[NetHost]) -> None:
    allowed, _ = test_hosts
    with hypervisor.boot(spec) as vm:  # type: ignore[attr-defined]
        seen = probe(vm, f"{allowed.address}:8080")
        assert vm.network_state is None
    assert "unreachable" in seen[f"{allowed.address}:8080"]  # no NIC at all: no route anywhere


def test_a_namespace_left_by_a_dead_lg_is_reaped(tmp_path: Path) -> None:
    from lg.vm import network

    script = ("import os; from lg.vm import network; n = network._allocation_lock;"
              "\nwith n():\n    i = network._free_index(); network._create_namespace(i)\nprint(i, flush=True)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    name = f"{NETNS_PREFIX}{done.stdout.strip()}"
    assert name in lg_namespaces()  # its creator has exited: it is an orphan now
    deadline = time.monotonic() + 5
    while name in lg_namespaces() and time.monotonic() < deadline:
        network.reap()
    assert name not in lg_namespaces()


def test_a_stale_host_link_of_a_free_index_is_replaced() -> None:
    """A host link `lgu-N` left behind (its namespace's name was removed while a process still held the
    namespace) must not make the next VM given index N fail with EEXIST: it is deleted and made anew."""
    from lg.vm import network

    with network._allocation_lock():
        index = network._free_index()
    stale = f"{network.HOST_LINK_PREFIX}{index}"
    _ip("link", "add", stale, "type", "veth", "peer", "name", f"lgstale{index}")
    try:
        attached = network.attach(NetworkSpec(allow=(), hosts=()))
        try:
            assert attached.index == index
            shown = subprocess.run(["ip", "-o", "link", "show", stale], capture_output=True, text=True, check=True)
            assert "@if" in shown.stdout  # the new pair's host end, whose peer is inside the namespace
            peer = subprocess.run(["ip", "link", "show", f"lgstale{index}"], capture_output=True, check=False)
            assert peer.returncode != 0  # the stale pair is gone, both ends
        finally:
            attached.release()
    finally:
        subprocess.run(["ip", "link", "del", stale], capture_output=True, check=False)


def test_a_pipeline_step_reaches_only_its_profile_s_hosts(lg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          tiny_image_ready: None, test_hosts: list[NetHost]) -> None:
    """Through `lg run`: the relaxation is graded (yellow: a named host, no gate), and the step record shows the
    allow-list applied."""
    allowed, other = test_hosts
    (tmp_path / "lg.yaml").write_text("image: tiny\nstate_dir: .lg\n")
    (tmp_path / "profiles" / "vm").mkdir(parents=True)
    (tmp_path / "profiles" / "vm" / "egress.yaml").write_text(
        "description: egress to one test host\nnetwork:\n  allow:\n"
        f"    - host: {allowed.address}\n      ports: [8080]\n")
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "pipeline.yaml").write_text(
        "name: egress\nprofile: egress\nsteps:\n  - id: fetch\n"
        f"    run: python3 probe.py {allowed.address}:8080 {other.address}:8080 > seen.txt\n")
    monkeypatch.delenv("LG_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    # A named host on the allow-list is yellow (issue 18: network graded by what a step does and where), so the
    # step runs without a gate; before, relax.network was orange and every networked step stopped for approval.
    finished = lg("run", "pipeline.yaml")
    assert finished.code == 0, finished.out + finished.err
    run_id = RunStore(tmp_path / ".lg").runs(1)[0].id
    seen = (tmp_path / "seen.txt").read_text()
    assert f"{allowed.address}:8080 -> HELLO" in seen and f"{other.address}:8080 -> refused" in seen
    status = json.loads(lg("status", run_id, "--json").out)
    network = next(step for step in status["steps"] if step["step_id"] == "fetch")["security"]["network"]
    assert network["mode"] == "allow-list" and network["denied_attempts"] >= 1
    assert network["allow"] == [f"{allowed.address}/32 tcp 8080"]
