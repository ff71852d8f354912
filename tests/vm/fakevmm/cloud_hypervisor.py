"""A fake `cloud-hypervisor` for the tests: a real process serving Cloud Hypervisor's REST API (/api/v1) on its
`--api-socket path=...`, checking every request against the contract written down from Cloud Hypervisor v53.0's
published documents (tests/vm/contracts/cloud-hypervisor-v53.0.json) and answering as they say: 204 on success,
404 and 405 where the OpenAPI document lists them, 500 with a text body for a failed action (docs/api.md). A
request the contract does not allow is journalled as a violation ($LG_FAKE_VMM_JOURNAL) and answered 400 (a
status of the fake's own: the document does not say how the VMM answers a malformed body). Its guest is
tests/vm/fakevmm/guest.py's stand-in; there is no kernel and no KVM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tests.vm.fakevmm.contract import Contract, Journal, load_contract
from tests.vm.fakevmm.guest import HybridVsock, StandInGuest
from tests.vm.fakevmm.server import UnixHttpServer

CONTRACT_FILE = "cloud-hypervisor-v53.0.json"
VERSION = "v53.0"
BASE = "/api/v1"
AGENT_PORT = 1024


class Answer(Exception):
    def __init__(self, status: int, message: str, violation: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.violation = status, message, violation


class FakeCloudHypervisor:
    def __init__(self, workdir: Path, journal: Journal | None = None) -> None:
        self.contract = Contract(load_contract(CONTRACT_FILE), schemas_key="schemas")
        self.workdir = workdir
        self.journal = journal or Journal()
        self.lock = threading.Lock()
        self.config: dict[str, Any] | None = None
        self.state = "None"  # None | Created | Running | Paused | Shutdown
        self.snapshot_taken = False
        self.guest: StandInGuest | None = None
        self.vsock: HybridVsock | None = None

    def handle(self, method: str, path: str, body: Any, raw: bytes) -> tuple[int, Any]:
        with self.lock:
            try:
                status, answer = self._handle(method, path, body, bool(raw))
                self.journal.record(request=f"{method} {path}", body=body if raw else None, status=status)
                return status, answer
            except Answer as refusal:
                self.journal.record(request=f"{method} {path}", body=body if raw else None, status=refusal.status,
                                    violations=[refusal.message] if refusal.violation else [],
                                    error=refusal.message)
                return refusal.status, refusal.message  # a text body: its shape is not documented

    def _handle(self, method: str, path: str, body: Any, present: bool) -> tuple[int, Any]:
        if not path.startswith(BASE + "/"):
            raise Answer(400, f"{path} is outside {BASE}", violation=True)
        operation = self.contract.operation(method, path[len(BASE):])
        if operation is None:
            raise Answer(400, f"{method} {path} is not an operation of lg's contract", violation=True)
        problems = self.contract.check_body(operation, body, present)
        if problems:
            raise Answer(400, "; ".join(problems), violation=True)
        name = operation.path.lstrip("/").replace(".", "_").replace("-", "_")
        return getattr(self, name)(body)  # type: ignore[no-any-return]

    def _need(self, states: tuple[str, ...], status: int, why: str) -> None:
        if self.state not in states:
            raise Answer(status, f"{why} (the VM is {self.state})", violation=True)

    def vmm_ping(self, body: Any) -> tuple[int, Any]:
        return 200, {"version": VERSION, "build_version": f"{VERSION} (lg's test fake)"}

    def vm_info(self, body: Any) -> tuple[int, Any]:
        self._need(("Created", "Running", "Paused", "Shutdown"), 404, "no VM created")
        return 200, {"config": self.config, "state": self.state}

    def vm_create(self, body: Any) -> tuple[int, Any]:
        if self.state != "None":
            raise Answer(500, "a VM is already created", violation=True)
        payload = body["payload"]
        for field in ("kernel", "initramfs"):
            if field in payload and not Path(payload[field]).is_file():
                raise Answer(500, f"cannot open the {field} {payload[field]}")
        for disk in body.get("disks", []):
            if not Path(disk.get("path", "")).is_file():
                raise Answer(500, f"cannot open the disk {disk.get('path')}")
        self.config, self.state = body, "Created"
        return 204, None

    def vm_boot(self, body: Any) -> tuple[int, Any]:
        self._need(("Created",), 404, "no VM created to boot")
        assert self.config is not None
        self._start_guest(self.config, memory=None, hostname=_hostname(self.config), resume=True)
        self.state = "Running"
        print(f"fake cloud-hypervisor {VERSION}: vm.boot: a stand-in guest (lg's agent on the host, no kernel)",
              flush=True)
        return 204, None

    def vm_pause(self, body: Any) -> tuple[int, Any]:
        self._need(("Created", "Running", "Paused"), 404, "no VM created")
        self._need(("Running",), 405, "the VM is not running")
        assert self.guest is not None
        self.guest.signal(signal.SIGSTOP)
        self.state = "Paused"
        return 204, None

    def vm_resume(self, body: Any) -> tuple[int, Any]:
        self._need(("Running", "Paused"), 404, "the VM is not booted")
        self._need(("Paused",), 405, "the VM is not paused")
        assert self.guest is not None
        self.guest.signal(signal.SIGCONT)
        if self.snapshot_taken and self.vsock is not None:
            self.vsock.reset()
        self.snapshot_taken, self.state = False, "Running"
        return 204, None

    def vm_snapshot(self, body: Any) -> tuple[int, Any]:
        self._need(("Created", "Running", "Paused"), 404, "no VM created")
        self._need(("Paused",), 405, "a snapshot needs the VM paused")
        url = body.get("destination_url", "")
        if not url.startswith("file://") or not Path(url[len("file://"):]).is_dir():
            raise Answer(500, f"the destination {url!r} is not an existing file:// directory", violation=True)
        directory = Path(url[len("file://"):])
        assert self.guest is not None and self.config is not None
        (directory / "config.json").write_text(json.dumps(self.config))
        self.guest.save(directory / "memory-ranges")
        (directory / "state.json").write_text(json.dumps({"fake": VERSION, "hostname": self.guest.hostname}))
        self.snapshot_taken = True
        return 204, None

    def vm_restore(self, body: Any) -> tuple[int, Any]:
        if self.state != "None":
            raise Answer(404, "a VM is already created: restore needs a fresh VMM", violation=True)
        url = body["source_url"]
        directory = Path(url[len("file://"):]) if url.startswith("file://") else None
        if directory is None or not all((directory / name).is_file()
                                        for name in ("config.json", "memory-ranges", "state.json")):
            raise Answer(500, f"{url!r} is not a snapshot directory", violation=True)
        config = json.loads((directory / "config.json").read_text())
        state = json.loads((directory / "state.json").read_text())
        for disk in config.get("disks", []):
            if not Path(disk["path"]).is_file():
                raise Answer(500, f"cannot open the disk {disk['path']}")
        socket_path = Path(config.get("vsock", {}).get("socket", ""))
        if config.get("vsock") and socket_path.exists():
            raise Answer(500, f"the vsock socket {socket_path} is in use (another VM's)", violation=True)
        self.config = config
        self._start_guest(config, memory=directory / "memory-ranges", hostname=state["hostname"],
                          resume=bool(body.get("resume")))
        self.state = "Running" if body.get("resume") else "Paused"
        return 204, None

    def vm_shutdown(self, body: Any) -> tuple[int, Any]:
        self._need(("Created", "Running", "Paused"), 404, "no VM created")
        self.stop()
        self.state = "Shutdown"
        return 204, None

    def vm_delete(self, body: Any) -> tuple[int, Any]:
        self.stop()
        self.config, self.state = None, "None"
        return 204, None

    def vmm_shutdown(self, body: Any) -> tuple[int, Any]:
        self.stop()
        threading.Timer(0.1, lambda: signal.raise_signal(signal.SIGTERM)).start()
        return 204, None

    def _start_guest(self, config: dict[str, Any], memory: Path | None, hostname: str, resume: bool) -> None:
        self.guest = StandInGuest(self.workdir / ".fake-guest", hostname)
        if memory is not None:
            self.guest.load(memory)
        self.guest.start()
        if not resume:
            self.guest.signal(signal.SIGSTOP)
        if config.get("vsock"):
            self.vsock = HybridVsock(Path(config["vsock"]["socket"]), self.guest, AGENT_PORT)

    def stop(self) -> None:
        if self.vsock is not None:
            self.vsock.close()
            self.vsock = None
        if self.guest is not None:
            self.guest.stop()
            self.guest = None


def _hostname(config: dict[str, Any]) -> str:
    words = config.get("payload", {}).get("cmdline", "").split()
    return next((word.split("=", 1)[1] for word in words if word.startswith("lg.hostname=")), "lg-guest")


def main(argv: list[str]) -> int:
    if "--version" in argv:
        print(f"cloud-hypervisor {VERSION} (lg's test fake)")
        return 0
    if argv[:1] != ["--api-socket"] or len(argv) < 2:
        print("fake cloud-hypervisor: lg's tests start it with --api-socket path=<path>", file=sys.stderr)
        return 2
    value = argv[1]
    socket_path = Path(value.split("=", 1)[1] if value.startswith("path=") else value)
    api = FakeCloudHypervisor(Path.cwd())
    server = UnixHttpServer(socket_path, api)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.serve_in_thread()
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        api.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
