"""A step's artifacts: files it made that the run keeps (paths or globs in `artifacts:`), and the artifacts of
steps it needs, delivered into its VM (`artifacts_from:`) without passing through the host workspace.

The guest's workspace after a step is known on the host without asking the guest to list it: it is the host
workspace as it was put in, plus the step's changes. Globs are matched against that list, and only what
matched is fetched. Kept files live in the run's directory, `artifacts/STEP/PATH`, beside `artifacts/STEP.json`
(path, size and sha256 of each), which `lg artifacts` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lg.errors import InvalidInput, LgError
from lg.model import FileChange, Step
from lg.runner.globs import is_glob, select
from lg.vm.api import Vm

ARTIFACTS_DIR = "artifacts"
CHUNK = 1 << 20


class ArtifactMissing(LgError):
    """A path named in `artifacts:` (not a glob) that the step did not leave, or artifacts to receive that a
    needed step did not keep: the step fails."""


@dataclass(frozen=True)
class Artifact:
    step: str
    path: str  # relative to the workspace, POSIX
    size: int
    sha256: str

    def to_json(self) -> dict[str, object]:
        return {"step": self.step, "path": self.path, "size": self.size, "sha256": self.sha256}


def artifacts_root(run_dir: Path) -> Path:
    return run_dir / ARTIFACTS_DIR


def step_artifacts_dir(run_dir: Path, step_id: str) -> Path:
    return artifacts_root(run_dir) / step_id


def workspace_files(workspace: Path, excluded: Callable[[str], bool]) -> set[str]:
    """The files and links a put of `workspace` copies in. Taken just before the put: steps running in parallel
    land their changes in the host workspace while this one runs, and those are not in this step's VM."""
    present: set[str] = set()
    for directory, subdirectories, files in os.walk(workspace):
        relative_dir = PurePosixPath(Path(directory).relative_to(workspace))
        subdirectories[:] = [name for name in subdirectories
                             if not excluded(str(relative_dir / name)) and not (Path(directory) / name).is_symlink()]
        present.update(str(relative_dir / name) for name in files if not excluded(str(relative_dir / name)))
    return {path.removeprefix("./") for path in present}


def guest_paths(put: set[str], changes: Sequence[FileChange]) -> set[str]:
    """The files and links in the guest's workspace after the step: what was put in, with its changes."""
    present = set(put)
    for change in changes:
        if change.kind == "deleted":
            present.discard(change.path)
        elif change.size is not None or change.symlink_target is not None:
            present.add(change.path)
    return present


def collect(vm: Vm, step: Step, guest_dir: str, candidates: Iterable[str], run_dir: Path,
            note: Callable[[str], None]) -> list[Artifact]:
    """Fetch what `step.artifacts` names from the guest into the run's directory, and record it."""
    if not step.artifacts:
        return []
    available = set(candidates)
    wanted: set[str] = set()
    for pattern in step.artifacts:
        found = select([pattern], available)
        if not found and not is_glob(pattern):
            raise ArtifactMissing(f"artifact {pattern!r}: not found in the step's workspace")
        if not found:
            note(f"artifact pattern {pattern!r} matched no file; nothing kept for it")
        wanted.update(found)
    destination = step_artifacts_dir(run_dir, step.id)
    if destination.exists():
        shutil.rmtree(destination)  # a previous attempt's files must not mix with this one's
    destination.mkdir(parents=True)
    if wanted:
        vm.get_paths(guest_dir, sorted(wanted), destination)
    kept = _inventory(step.id, destination)
    _write_json(run_dir, step.id, kept)
    total = sum(artifact.size for artifact in kept)
    note(f"kept {len(kept)} artifact file(s), {total} bytes")
    return kept


def _inventory(step_id: str, directory: Path) -> list[Artifact]:
    kept = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            kept.append(Artifact(step_id, path.relative_to(directory).as_posix(), path.stat().st_size,
                                 _sha256(path)))
    return kept


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_record(run_dir: Path, step_id: str, kept: list[Artifact]) -> None:
    """Record a step's kept artifacts (lg serve records those a remote runner uploads the same way)."""
    _write_json(run_dir, step_id, kept)


def _write_json(run_dir: Path, step_id: str, kept: list[Artifact]) -> None:
    target = artifacts_root(run_dir) / f"{step_id}.json"
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps([artifact.to_json() for artifact in kept], indent=1))
    temporary.replace(target)


def recorded(run_dir: Path, step_id: str | None = None) -> list[Artifact]:
    """The artifacts a run kept (of one step, or all), as recorded when they were collected."""
    root = artifacts_root(run_dir)
    lists = [root / f"{step_id}.json"] if step_id else sorted(root.glob("*.json"))
    found: list[Artifact] = []
    for listing in lists:
        if not listing.is_file():
            continue
        try:
            entries = json.loads(listing.read_text())
            found.extend(Artifact(str(e["step"]), str(e["path"]), int(e["size"]), str(e["sha256"])) for e in entries)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InvalidInput(f"{listing}: not an artifact list lg wrote ({error})") from error
    return found


def deliver(vm: Vm, step: Step, run_dir: Path, owner: tuple[int, int], note: Callable[[str], None]) -> None:
    """Put the artifacts of the steps `step.artifacts_from` names into this step's VM, each at its path."""
    for source, guest_path in step.artifacts_from.items():
        directory = step_artifacts_dir(run_dir, source)
        if not directory.is_dir():
            raise ArtifactMissing(f"step {source!r} kept no artifacts for step {step.id!r} to receive "
                           f"(it declares none, or was skipped)")
        stats = vm.put_tree(directory, guest_path, owner=owner)
        note(f"artifacts of {source}: {stats.files} file(s) at {guest_path}")


def copy_out(run_dir: Path, artifacts: Sequence[Artifact], out_dir: Path) -> list[Path]:
    """Copy kept artifacts to `out_dir/STEP/PATH`, checking each against its recorded sha256."""
    written = []
    for artifact in artifacts:
        source = step_artifacts_dir(run_dir, artifact.step) / artifact.path
        if not source.is_file() or _sha256(source) != artifact.sha256:
            raise InvalidInput(f"artifact {artifact.step}/{artifact.path} is missing or changed since it was kept")
        target = out_dir / artifact.step / artifact.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".lg-", delete=False) as handle:
            shutil.copyfileobj(source.open("rb"), handle)
        Path(handle.name).replace(target)
        written.append(target)
    return written
