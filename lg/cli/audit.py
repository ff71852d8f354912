"""`lg audit verify` and `lg audit export`: the hash-chained audit log, checked offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lg.cli.output import emit_json, json_option, state_store
from lg.cli.remote import api_client, server_options
from lg.errors import ExitCode, InvalidInput


@click.group()
def audit() -> None:
    """Verify or export the tamper-evident audit log."""


@audit.command()
@click.argument("export", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@json_option
@server_options
def verify(export: Path | None, as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Check the whole chain, and the runs, gates and decisions against it; report every edited, deleted,
    inserted or reordered record and every run without its records. Exit 1 if any.

    With EXPORT (what `lg audit export` wrote, JSON lines or a --json array), check that copy's chain
    offline instead, with no state store or server at all (SQLite or PostgreSQL alike). With --server, the
    server verifies its own log and says what it found."""
    report: dict[str, Any]
    client = api_client(server, token_file) if export is None else None
    if export is not None:
        from lg.runs.audit import verify_export  # noqa: PLC0415

        records = _read_export(export)
        problems = verify_export(records)
        report = {"ok": not problems, "records": len(records),
                  "problems": [{"seq": p.seq, "message": p.message} for p in problems]}
    elif client is not None:
        report = client.get_json("/api/v1/audit/verify")
    else:
        store = state_store()
        problems = store.verify_audit()
        report = {"ok": not problems, "records": sum(1 for _ in store.audit_log.records()),
                  "problems": [{"seq": p.seq, "message": p.message} for p in problems]}
    if as_json:
        emit_json(report)
    elif report["problems"]:
        for problem in report["problems"]:
            click.echo(f"audit: {problem['message']}", err=True)
    else:
        click.echo(f"audit log intact: {report['records']} records")
    return ExitCode.FAILED if report["problems"] else ExitCode.OK


def _read_export(path: Path) -> list[dict[str, Any]]:
    """The records of an export: JSON lines, or one JSON array (--json). What is not JSON names its line."""
    text = path.read_text(encoding="utf-8", errors="replace")
    records: list[Any] = []
    if text.lstrip().startswith("["):
        try:
            loaded = json.loads(text)
        except ValueError as error:
            raise InvalidInput(f"{path}: not JSON: {error}") from None
        records = loaded if isinstance(loaded, list) else [loaded]
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as error:
                    raise InvalidInput(f"{path}:{number}: not a JSON record: {error}") from None
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise InvalidInput(f"{path}: record {number} is not a JSON object")
    return records


@audit.command()
@json_option
@server_options
def export(as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Print every record (JSON lines; --json for one JSON array), for a SIEM; `lg audit verify FILE` checks
    such a copy offline. With --server, the server's records."""
    client = api_client(server, token_file)
    records: list[dict[str, Any]]
    if client is not None:
        records = client.get_json("/api/v1/audit/export")
    else:
        records = [record.to_json() for record in state_store().audit_log.records()]
    if as_json:
        emit_json(records)
    else:
        for record in records:
            click.echo(json.dumps(record, separators=(",", ":")))
    return ExitCode.OK
