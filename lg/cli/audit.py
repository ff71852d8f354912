"""`lg audit verify` and `lg audit export`: the hash-chained audit log, checked offline."""

from __future__ import annotations

import click

from lg.cli.output import emit_json, json_option, state_store
from lg.errors import ExitCode


@click.group()
def audit() -> None:
    """Verify or export the tamper-evident audit log."""


@audit.command()
@json_option
def verify(as_json: bool) -> int:
    """Check the whole chain, and the runs, gates and decisions against it; report every edited, deleted,
    inserted or reordered record and every run without its records. Exit 1 if any."""
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


@audit.command()
@json_option
def export(as_json: bool) -> int:
    """Print every record (JSON lines; --json for one JSON array), for a SIEM."""
    import json  # noqa: PLC0415

    records = [record.to_json() for record in state_store().audit_log.records()]
    if as_json:
        emit_json(records)
    else:
        for record in records:
            click.echo(json.dumps(record, separators=(",", ":")))
    return ExitCode.OK
