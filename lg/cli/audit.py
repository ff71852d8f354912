"""`lg audit verify` and `lg audit export`: the hash-chained audit log, checked offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lg.cli.output import emit_json, json_option, state_store
from lg.cli.remote import api_client, server_options
from lg.errors import ExitCode


@click.group()
def audit() -> None:
    """Verify or export the tamper-evident audit log."""


@audit.command()
@json_option
@server_options
def verify(as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Check the whole chain, and the runs, gates and decisions against it; report every edited, deleted,
    inserted or reordered record and every run without its records. Exit 1 if any.

    With --server, the server verifies its own log and says what it found."""
    client = api_client(server, token_file)
    report: dict[str, Any]
    if client is not None:
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


@audit.command()
@json_option
@server_options
def export(as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Print every record (JSON lines; --json for one JSON array), for a SIEM. With --server, the server's
    records, to be verified offline (lg.runs.audit) by whoever keeps them."""
    import json  # noqa: PLC0415

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
