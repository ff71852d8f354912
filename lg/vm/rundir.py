"""Each VM's private run directory, its owner record, and the reaper of leftovers.

A VM's sockets, console log and disk overlay live in `<parent>/<vm id>/`, removed when the VM is destroyed.
`owner.json` names the lg process and the VMM process (each with its start time, so a reused pid is never
mistaken for them). If lg dies without cleaning up (`kill -9`), PR_SET_PDEATHSIG already killed the VMM;
`reap_leftovers` then removes the directory, and kills a VMM that somehow survived, the next time any lg
boots a VM there or `lg doctor` looks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lg.vm.host import process_alive, process_start_time

OWNER_FILE = "owner.json"
ORPHAN_DIR_SECONDS = 600.0


@dataclass(frozen=True)
class Owner:
    lg_pid: int
    lg_started: int | None
    vmm_pid: int
    vmm_started: int | None
    backend: str


def create_run_dir(parent: Path, vm_id: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / vm_id
    path.mkdir(mode=0o700)
    return path


def write_owner(run_dir: Path, vmm_pid: int, backend: str) -> None:
    owner = Owner(os.getpid(), process_start_time(os.getpid()), vmm_pid, process_start_time(vmm_pid), backend)
    staging = run_dir / f".{OWNER_FILE}.tmp"
    staging.write_text(json.dumps(asdict(owner)))
    staging.replace(run_dir / OWNER_FILE)


def read_owner(run_dir: Path) -> Owner | None:
    try:
        data = json.loads((run_dir / OWNER_FILE).read_text())
        return Owner(**data)
    except (OSError, ValueError, TypeError):
        return None


def _same_process(pid: int, started: int | None) -> bool:
    return process_alive(pid) and (started is None or process_start_time(pid) == started)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def reap_leftovers(parent: Path) -> list[str]:
    """Remove run directories whose lg process is gone (killing their VMM if it still runs)."""
    try:
        candidates = [path for path in parent.iterdir() if path.is_dir()]
    except OSError:
        return []
    reaped = []
    for run_dir in candidates:
        owner = read_owner(run_dir)
        if owner is None:
            if _older_than(run_dir, ORPHAN_DIR_SECONDS):  # lg died between mkdir and starting the VMM
                shutil.rmtree(run_dir, ignore_errors=True)
                reaped.append(run_dir.name)
            continue
        if _same_process(owner.lg_pid, owner.lg_started):
            continue
        if _same_process(owner.vmm_pid, owner.vmm_started):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(owner.vmm_pid, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)
        reaped.append(run_dir.name)
    return reaped
