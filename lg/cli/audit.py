"""`lg audit verify` and `lg audit export`: the hash-chained audit log, checked offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lg.cli.output import emit_json, json_option, state_store
from lg.errors import ExitCode, InvalidInput
from lg.runs.audit import verify_export


@click.group()
def audit() -> None:
    """Verify or export the tamper-evident audit log."""


@audit.command()
@click.argument("export", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@json_option
def verify(export: Path | None, as_json: bool) -> int:
    """Check the whole chain, and the runs, gates and decisions against it; report every edited, deleted,
    inserted or reordered record and every run without its records. Exit 1 if any.

    With EXPORT (what `lg audit export` wrote, JSON lines or a --json array), check that copy's chain
    offline instead, with no state store at all (SQLite or PostgreSQL alike)."""
    if export is not None:
        records = _read_export(export)
        problems = verify_export(records)
        count = len(records)
    else:
        store = state_store()
        problems = store.verify_audit()
        count = sum(1 for _ in store.audit_log.records())
    if as_json:
        emit_json({"ok": not problems, "records": count,
                   "problems": [{"seq": p.seq, "message": p.message} for p in problems]})
    elif problems:
        for problem in problems:
            click.echo(f"audit: {problem.message}", err=True)
    else:
        click.echo(f"audit log intact: {count} records")
    return ExitCode.FAILED if problems else ExitCode.OK


def _read_export(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if text.lstrip().startswith("["):
            loaded = json.loads(text)
            records = loaded if isinstance(loaded, list) else [loaded]
        else:
            records = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except ValueError as error:
                        raise InvalidInput(f"{path}:{number}: not a JSON record: {error}") from None
    except ValueError as error:
        raise InvalidInput(f"{path}: not JSON: {error}") from None
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise InvalidInput(f"{path}: record {number} is not a JSON object")
    return records


@audit.command()
@json_option
def export(as_json: bool) -> int:
    """Print every record (JSON lines; --json for one JSON array), for a SIEM."""
    records = [record.to_json() for record in state_store().audit_log.records()]
    if as_json:
        emit_json(records)
    else:
        for record in records:
            click.echo(json.dumps(record, separators=(",", ":")))
    return ExitCode.OK
