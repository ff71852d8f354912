"""What a resumed run goes on with: the inputs it started with, or nothing.

A run records the digest of every file its inputs came from (lg.inputs). A policy, VM profile, seccomp or
AppArmor file, image recipe or lg.yaml edited while the run waited would otherwise grade and confine the rest
of it under rules nobody approved for it, so `lg resume` refuses until each changed file is accepted by name
(`--accept-changed FILE`), and the acceptance is an audit record. The pipeline itself cannot be accepted: its
steps are the run's steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lg.approvals.decide import current_user
from lg.config.inputs import text_of
from lg.errors import InvalidInput
from lg.inputs.run_inputs import InputChange, InputFile, RunInputs, changed_files, load_run_inputs
from lg.runs.ports import RunStoreLike
from lg.runs.store import RunRecord


def bind_unchanged_inputs(store: RunStoreLike, record: RunRecord, accepted: Sequence[Path] = ()) -> RunInputs:
    """The run's inputs loaded again, once they are known to be the ones it recorded (or accepted)."""
    path = Path(record.pipeline_path)
    if not path.is_file():
        raise InvalidInput(f"run {record.id}: its pipeline file {path} is gone; it cannot be resumed")
    recorded = _recorded(record)
    wanted = {file.resolve() for file in accepted}
    _refuse(record, changed_files(recorded), wanted)  # before loading: a changed file may not even load
    # The run goes on with the --input values it was started with (recorded, as text they round-trip through).
    given = {name: text_of(value) for name, value in (record.input_values or {}).items()}
    inputs = load_run_inputs(path, with_images=True, input_values=given)
    changes = changed_files(recorded, inputs.files) if record.inputs is not None else []
    _refuse(record, changes, wanted)
    unknown = wanted - {change.path for change in changes}
    if unknown:
        raise InvalidInput(f"--accept-changed {sorted(unknown)[0]}: run {record.id} does not depend on that file, "
                           "or it did not change")
    if changes:
        store.accept_inputs(record.id, inputs.files_json(), [change.to_json() for change in changes],
                            current_user())
    return inputs


def _recorded(record: RunRecord) -> list[InputFile]:
    if record.inputs is not None:
        return [InputFile.from_json(file) for file in record.inputs]
    # A run started before inputs were recorded: only its pipeline's digest is known.
    path = Path(record.pipeline_path).resolve()
    return [InputFile("pipeline", path, record.pipeline_sha256)] if record.pipeline_sha256 else []


def _refuse(record: RunRecord, changes: Sequence[InputChange], accepted: set[Path]) -> None:
    pipeline = [change for change in changes if change.kind == "pipeline"]
    if pipeline:
        raise InvalidInput(f"run {record.id}: {pipeline[0].describe()} since the run started; resuming would run "
                           "something else than was started (start a new run instead)")
    refused = [change for change in changes if change.path not in accepted]
    if refused:
        listed = "\n".join(f"  {change.describe()}" for change in refused)
        raise InvalidInput(
            f"run {record.id}: {len(refused)} of its input file(s) changed since it started, so the rest of it "
            f"would be graded or confined by rules it was not started with:\n{listed}\n"
            f"to go on with them anyway: lg resume {record.id} "
            + " ".join(f"--accept-changed {change.path}" for change in refused)
            + " (recorded in the audit log); or start a new run")
