"""A fake `firecracker` for the tests: a real process serving Firecracker's HTTP API on its `--api-sock`, which
checks every request against the contract written down from Firecracker v1.16.1's published documents
(tests/vm/contracts/firecracker-v1.16.1.json) and answers as they say, errors included (400 with
{"fault_message": ...}). Every request, its answer and any violation go to the journal the test names
($LG_FAKE_VMM_JOURNAL); a test fails on any violation. Its guest is tests/vm/fakevmm/guest.py's stand-in (the
real agent behind the documented hybrid vsock); there is no kernel and no KVM.

Run as `python -m tests.vm.fakevmm.firecracker --api-sock PATH [--id ID]` (tests/vm/fakevmm/bin.py writes the
`firecracker` executable that does). Started by the fake jailer, $LG_FAKE_JAIL_ROOT says where the jail's `/` is.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.vm.fakevmm.contract import Contract, Journal, load_contract
from tests.vm.fakevmm.guest import HybridVsock, StandInGuest
from tests.vm.fakevmm.server import UnixHttpServer

CONTRACT_FILE = "firecracker-v1.16.1.json"
VERSION = "1.16.1"
AGENT_PORT = 1024
JAIL_ENV = "LG_FAKE_JAIL_ROOT"
FRESH_ALLOWED = {"PUT /logger", "PUT /metrics"}  # what may be configured before a snapshot load


class Refused(Exception):
    def __init__(self, message: str, violation: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.violation = violation  # lg should never have sent it (else: an error the document allows for)


class FakeFirecracker:
    def __init__(self, workdir: Path, jail_root: Path | None = None, journal: Journal | None = None,
                 instance_id: str = "anonymous-instance") -> None:
        self.contract = Contract(load_contract(CONTRACT_FILE))
        self.workdir = workdir
        self.jail_root = jail_root
        self.journal = journal or Journal()
        self.instance_id = instance_id
        self.lock = threading.Lock()
        self.configured: dict[str, Any] = {}  # "PUT /boot-source" -> body, "PUT /drives/root" -> body ...
        self.state = "Not started"
        self.started = False  # InstanceStart succeeded or a snapshot was loaded
        self.snapshot_taken = False  # a vsock reset is due at the next resume
        self.guest: StandInGuest | None = None
        self.vsock: HybridVsock | None = None

    # --- paths as the process sees them ---

    def host_path(self, path: str) -> Path:
        if path.startswith("/") and self.jail_root is not None:
            return self.jail_root / path.lstrip("/")
        return self.workdir / path

    # --- requests ---

    def handle(self, method: str, path: str, body: Any, raw: bytes) -> tuple[int, Any]:
        with self.lock:
            try:
                status, answer = self._handle(method, path, body, bool(raw))
                self.journal.record(request=f"{method} {path}", body=body if raw else None, status=status)
                return status, answer
            except Refused as refusal:
                self.journal.record(request=f"{method} {path}", body=body if raw else None, status=400,
                                    violations=[refusal.message] if refusal.violation else [],
                                    error=refusal.message)
                return 400, {"fault_message": refusal.message}

    def _handle(self, method: str, path: str, body: Any, present: bool) -> tuple[int, Any]:
        operation = self.contract.operation(method, path)
        if operation is None:
            raise Refused(f"{method} {path} is not an operation of lg's contract with Firecracker")
        problems = self.contract.check_body(operation, body, present)
        if problems:
            raise Refused("; ".join(problems))
        if operation.phase == "pre-boot" and self.started:
            raise Refused(f"{operation.key} is pre-boot only and the microVM has started")
        if operation.phase == "post-boot" and not self.started:
            raise Refused(f"{operation.key} is post-boot only and the microVM has not started")
        handler = getattr(self, "op_" + operation.key.lower().replace(" ", "_").replace("/", "_").replace("-", "_")
                          .replace("{", "").replace("}", ""), None)
        if handler is not None:
            return handler(path, body)  # type: ignore[no-any-return]
        if method == "PUT":
            self.configured[f"{method} {path}"] = body
        return 204, None

    def op_get_(self, path: str, body: Any) -> tuple[int, Any]:
        return 200, {"app_name": "Firecracker", "id": self.instance_id, "state": self.state, "vmm_version": VERSION}

    def op_get__version(self, path: str, body: Any) -> tuple[int, Any]:
        return 200, {"firecracker_version": VERSION}

    def op_get__machine_config(self, path: str, body: Any) -> tuple[int, Any]:
        return 200, self.configured.get("PUT /machine-config", {"vcpu_count": 1, "mem_size_mib": 128})

    def op_put__machine_config(self, path: str, body: Any) -> tuple[int, Any]:
        if body.get("smt") and body["vcpu_count"] != 1 and body["vcpu_count"] % 2:
            raise Refused("with smt the vCPU count is 1 or even")
        self.configured["PUT /machine-config"] = body
        return 204, None

    def op_put__drives_drive_id(self, path: str, body: Any) -> tuple[int, Any]:
        if path.rsplit("/", 1)[1] != body["drive_id"]:
            raise Refused("drive_id in the path and in the body differ", violation=False)
        if "path_on_host" in body and not self.host_path(body["path_on_host"]).is_file():
            raise Refused(f"cannot open the drive's file {body['path_on_host']}", violation=False)
        self.configured[f"PUT {path}"] = body
        return 204, None

    def op_put__boot_source(self, path: str, body: Any) -> tuple[int, Any]:
        for field in ("kernel_image_path", "initrd_path"):
            if field in body and not self.host_path(body[field]).is_file():
                raise Refused(f"cannot open {field} {body[field]}", violation=False)
        self.configured["PUT /boot-source"] = body
        return 204, None

    def op_put__actions(self, path: str, body: Any) -> tuple[int, Any]:
        if body["action_type"] != "InstanceStart":
            return 204, None
        if self.started:
            raise Refused("InstanceStart succeeds once only (docs/api_requests/actions.md)")
        if "PUT /boot-source" not in self.configured:
            raise Refused("InstanceStart without a boot source: there is no kernel to start")
        self._start_guest(self.configured.get("PUT /vsock"), self._hostname(), memory=None)
        self.started, self.state = True, "Running"
        print(f"fake firecracker {VERSION}: InstanceStart: a stand-in guest (lg's agent on the host, no kernel)",
              flush=True)
        return 204, None

    def op_patch__vm(self, path: str, body: Any) -> tuple[int, Any]:
        assert self.guest is not None
        if body["state"] == "Paused":
            self.guest.signal(signal.SIGSTOP)
            self.state = "Paused"
        else:
            self.guest.signal(signal.SIGCONT)
            if self.snapshot_taken and self.vsock is not None:
                self.vsock.reset()  # snapshot-support.md: connections closed when the microVM resumes
            self.snapshot_taken, self.state = False, "Running"
        return 204, None

    def op_put__snapshot_create(self, path: str, body: Any) -> tuple[int, Any]:
        if self.state != "Paused":
            raise Refused("a snapshot needs the microVM Paused (snapshot-support.md)")
        if body.get("snapshot_type", "Full") != "Full":
            raise Refused("lg takes Full snapshots only (a Diff snapshot is not resumable on its own)")
        assert self.guest is not None
        self.guest.save(self.host_path(body["mem_file_path"]))
        state = {"fake_firecracker": VERSION, "configured": self.configured, "hostname": self.guest.hostname}
        self.host_path(body["snapshot_path"]).write_text(json.dumps(state))
        self.snapshot_taken = True
        return 204, None

    def op_put__snapshot_load(self, path: str, body: Any) -> tuple[int, Any]:
        others = set(self.configured) - FRESH_ALLOWED
        if others or self.started:
            raise Refused(f"snapshot load needs a fresh process; already configured: {sorted(others)}")
        if ("mem_backend" in body) == ("mem_file_path" in body):
            raise Refused("exactly one of mem_backend and mem_file_path must be given")
        memory = body["mem_backend"]["backend_path"] if "mem_backend" in body else body["mem_file_path"]
        if "mem_backend" in body and body["mem_backend"]["backend_type"] != "File":
            raise Refused("lg loads memory from a File backend only")
        try:
            state = json.loads(self.host_path(body["snapshot_path"]).read_text())
        except (OSError, ValueError) as problem:
            self._fail_load(f"cannot read the snapshot state: {problem}")
        if not self.host_path(memory).is_file():
            self._fail_load(f"cannot open the memory file {memory}")
        configured = state["configured"]
        for key, device in configured.items():  # the same relative paths as the snapshotted microVM had
            if key.startswith("PUT /drives/") and not self.host_path(device["path_on_host"]).is_file():
                self._fail_load(f"the drive file {device['path_on_host']} is not where the snapshot had it")
        vsock = dict(configured.get("PUT /vsock") or {})
        if vsock and "vsock_override" in body:
            vsock["uds_path"] = body["vsock_override"]["uds_path"]
        self._start_guest(vsock or None, state["hostname"], memory=self.host_path(memory),
                          resume=bool(body.get("resume_vm")))
        self.configured = dict(configured)
        self.started = True
        self.state = "Running" if body.get("resume_vm") else "Paused"
        return 204, None

    def _fail_load(self, message: str) -> None:
        """A failed load ends the process (snapshot-support.md): answer, then exit."""
        self.journal.record(request="PUT /snapshot/load", status=400, error=message, violations=[])
        threading.Timer(0.2, lambda: os._exit(1)).start()
        raise Refused(message, violation=False)

    def _hostname(self) -> str:
        args = self.configured.get("PUT /boot-source", {}).get("boot_args", "")
        return next((word.split("=", 1)[1] for word in args.split() if word.startswith("lg.hostname=")),
                    "lg-guest")

    def _start_guest(self, vsock: dict[str, Any] | None, hostname: str, memory: Path | None,
                     resume: bool = True) -> None:
        self.guest = StandInGuest(self.workdir / ".fake-guest", hostname)
        if memory is not None:
            self.guest.load(memory)
        self.guest.start()
        if not resume:
            self.guest.signal(signal.SIGSTOP)
        if vsock is not None:
            self.vsock = HybridVsock(self.host_path(vsock["uds_path"]), self.guest, AGENT_PORT)

    def stop(self) -> None:
        if self.vsock is not None:
            self.vsock.close()
        if self.guest is not None:
            self.guest.stop()


def main(argv: list[str]) -> int:
    if "--version" in argv:
        print(f"Firecracker v{VERSION} (lg's test fake)")
        return 0
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    jail = os.environ.get(JAIL_ENV)
    api = FakeFirecracker(Path.cwd(), Path(jail) if jail else None, instance_id=options.get("--id", "anonymous"))
    api_sock = options.get("--api-sock", "/run/firecracker.socket")
    server = UnixHttpServer(api.host_path(api_sock), api)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server.serve_in_thread()
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        api.stop()
        server.server_close()
    time.sleep(0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
