"""Held effects for a runner resuming elsewhere: a step's change list with download links, and each held file
byte for byte. A run recorded through the server (`lg run --server`) holds its files in the blob store, by the
SHA-256 each change reports, served while the step waits at its gate or is being applied; a run recorded on
the server's own machine holds them in the state directory, never served from outside the step's held
directory."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

from lg.runner.effects import effects_dir
from lg.runs.blobs import BlobRefused, BlobStore
from lg.runs.states import StepStatus
from lg.runs.store import RunRecord, StepRecord
from lg.server.blobs import blob_reply
from lg.server.call import Call, Reply, find_run, find_step
from lg.server.errors import bad_request, not_found

# A step's held files are served while they wait to be applied (never once applied, discarded or rejected).
_HOLDING = frozenset({StepStatus.HELD, StepStatus.APPLYING})


def held_root(call: Call, record: RunRecord, step: StepRecord) -> Path:
    return effects_dir(call.config.state_dir / "runs" / record.id, step.step_id)


def effects_manifest(call: Call) -> Any:
    record = find_run(call.store, call.params["run"])
    step = find_step(call.store, record, call.params["step"])
    root = held_root(call, record, step)
    changes = []
    for change in step.changes:
        held = _held_file(root, str(change.get("path", ""))) is not None or _blob_of(call, step, change) is not None
        download = f"/api/v1/runs/{record.id}/steps/{step.step_id}/effects/{change['path']}" if held else None
        changes.append({**change, "download": download})
    return {"run": record.id, "step": step.step_id, "status": step.status.value,
            "has_held_files": any(c["download"] for c in changes) or root.is_dir(), "changes": changes}


def _blob_of(call: Call, step: StepRecord, change: dict[str, Any]) -> str | None:
    """The blob name holding this change's content, if the step holds it in the blob store."""
    digest = change.get("sha256")
    if step.status not in _HOLDING or change.get("kind") == "deleted" or change.get("symlink_target") is not None:
        return None
    try:
        return digest if isinstance(digest, str) and BlobStore(call.config.blob_dir).has(digest) else None
    except BlobRefused:
        return None


def effect_file(call: Call) -> Reply:
    """One held file, byte for byte, checked against the digest the guest reported."""
    record = find_run(call.store, call.params["run"])
    step = find_step(call.store, record, call.params["step"])
    relative = safe_relative(call.params["path"])
    listed = {str(c.get("path")): c for c in step.changes}
    change = listed.get(relative)
    if change is None:
        raise not_found("unknown_effect", f"step {step.step_id} of run {record.id} made no change {relative!r}")
    blob = _blob_of(call, step, change)
    if blob is not None:
        return blob_reply(call, blob, not_found("not_held", f"{relative!r} of step {step.step_id} is no longer held"))
    held = _held_file(held_root(call, record, step), relative)
    if held is None:
        raise not_found("not_held", f"{relative!r} of step {step.step_id} is not held (applied, discarded, or a "
                                    "deletion or symlink, which carry no content)")
    return Reply(content=held.read_bytes(), media_type="application/octet-stream",
                 headers={"X-Content-SHA256": str(change.get("sha256") or "")})


_BAD_PATH = re.compile(r"[\x00-\x1f\\]")


def safe_relative(text: str) -> str:
    """A workspace-relative POSIX path, or refused: no absolute paths, no `..` or `.` parts, no empty parts,
    no control characters or backslashes."""
    parts = text.split("/")
    if not text or text.startswith("/") or _BAD_PATH.search(text) or any(p in ("", ".", "..") for p in parts):
        raise bad_request("bad_path", f"path {text!r}: a relative path inside the workspace, without '..', '.', "
                                      "empty parts, backslashes or control characters")
    return text


def _held_file(root: Path, relative: str) -> Path | None:
    """The held regular file at `relative` under `root`, never a symlink and never outside it."""
    if not relative or not root.is_dir():
        return None
    path = root.joinpath(*PurePosixPath(relative).parts)
    try:
        inside = path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except OSError:
        return None
    if not inside or path.is_symlink() or not path.is_file():
        return None
    return path


