"""`lg pending`, `lg show`, `lg approve`, `lg reject`: decide gates headlessly, from a terminal or a CI job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lg.cli.output import color_enabled, emit_json, json_option, state_store, webhook_courier
from lg.cli.remote import api_client, server_options
from lg.errors import ExitCode, InvalidInput
from lg.runs.states import GateStatus

if TYPE_CHECKING:
    from lg.client.gates import RemoteGates
    from lg.runs.gates import Gate, GateStore, Verdict
    from lg.runs.store import RunRecord, RunStore

key_option = click.option(
    "--key", type=click.Path(path_type=Path, dir_okay=False), envvar="LG_SIGNING_KEY",
    help="Sign the decision with this SSH key (private key, or public key held by ssh-agent). [env: LG_SIGNING_KEY]")
digest_option = click.option(
    "--digest", metavar="SHA256",
    help="Refuse unless the gate's digest starts with this (at least its first 16 hex digits, as lg pending "
         "prints them): binds the decision to what you reviewed.")
signed_option = click.option(
    "--signed", type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Submit a decision signed elsewhere (written by --sign-only).")
sign_only_option = click.option(
    "--sign-only", type=click.Path(path_type=Path, dir_okay=False),
    help="Write the signed decision to this file instead of recording it (to submit with --signed elsewhere).")


def _stores() -> tuple[RunStore, GateStore]:
    """The state store and its gates."""
    from lg.runs.gates import GateStore  # noqa: PLC0415

    store = state_store()
    return store, GateStore(store)


def gate_view(gate: Gate, record: RunRecord | None = None) -> dict[str, Any]:
    return {
        "run": gate.run_id, "gate": gate.gate_id, "step": gate.step_id, "kind": gate.kind,
        "status": gate.status, "level": gate.card.get("level"), "digest": gate.digest,
        "created": gate.created, "expires": gate.expires, "decided": gate.decided, "outcome": gate.outcome,
        "approvers": list(gate.rules.approvers), "count": gate.rules.count,
        "require_signature": gate.rules.require_signature,
        "pipeline": record.pipeline if record else None, "initiator": record.initiator if record else None,
    }


def _remote(server: str | None, token_file: Path | None) -> RemoteGates | None:
    """The gates of the server the command was pointed at, or None for the local state store."""
    client = api_client(server, token_file)
    if client is None:
        return None
    from lg.client.gates import RemoteGates  # noqa: PLC0415

    return RemoteGates(client)


@click.command()
@json_option
@server_options
def pending(as_json: bool, server: str | None, token_file: Path | None) -> int:
    """List open gates, oldest first, with the digest a decision must name."""
    remote = _remote(server, token_file)
    if remote is not None:
        from lg.client.gates import local_view  # noqa: PLC0415

        rows = [local_view(row) for row in remote.pending()]
    else:
        store, gates = _stores()
        rows = [gate_view(gate, store.run(gate.run_id)) for gate in gates.open_gates()]
    if as_json:
        emit_json(rows)
        return ExitCode.OK
    if not rows:
        click.echo("no open gates")
    for row in rows:
        expires = f"  expires in {max(0, row['expires'] - time.time()):.0f}s" if row["expires"] else ""
        need = f"{row['count']} of {', '.join(row['approvers'])}" if row["approvers"] else f"{row['count']} approval(s)"
        click.echo(f"{row['run']}  {row['gate']:<24} {row['level']:<7} {row['kind']:<8} {row['pipeline']}  "
                   f"needs {need}  digest {row['digest'][:16]}{expires}")
    return ExitCode.OK


@click.command()
@click.argument("run_id", metavar="RUN")
@click.argument("gate_id", metavar="[GATE]", required=False)
@json_option
@server_options
def show(run_id: str, gate_id: str | None, as_json: bool, server: str | None, token_file: Path | None) -> int:
    """Print the diff card of a gate: risk, rules, command, relaxations, and each held change as a diff."""
    remote = _remote(server, token_file)
    detail = _remote_detail(remote, run_id, gate_id) if remote is not None else _local_detail(run_id, gate_id)
    if as_json:
        emit_json(detail)
        return ExitCode.OK
    from lg.approvals.card import render  # noqa: PLC0415

    click.echo(render(detail["card"], digest=detail["digest"], status=detail["status"], outcome=detail["outcome"],
                      colour=color_enabled()))
    for decision in detail["decisions"]:
        signed = "signed" if decision["signed"] else "unsigned"
        click.echo(f"  decision: {decision['verdict']} by {decision['approver']} ({signed})"
                   + (f": {decision['comment']}" if decision["comment"] else ""))
    if detail["status"] == GateStatus.OPEN:
        click.echo(f"  decide: lg approve {detail['run']} {detail['gate']} --digest {detail['digest'][:16]}\n"
                   f"          lg reject {detail['run']} {detail['gate']} --reason TEXT")
    return ExitCode.OK


def _local_detail(run_id: str, gate_id: str | None) -> dict[str, Any]:
    """A gate of the local store as `lg show --json` prints it."""
    store, gates = _stores()
    record = store.run(run_id)
    gate = _pick(gates, record, gate_id)
    decisions = [{"approver": d.approver, "verdict": d.verdict, "comment": d.comment, "signed": d.signature is not None,
                  "ts": d.ts} for d in gates.decisions(gate)]
    return {**gate_view(gate, record), "card": gate.card, "decisions": decisions}


def _remote_detail(remote: RemoteGates, run_id: str, gate_id: str | None) -> dict[str, Any]:
    """A gate read from the server, with the fields `lg show --json` prints locally."""
    from lg.client.gates import local_decision, local_view  # noqa: PLC0415

    detail = remote.pick(run_id, gate_id, to_decide=False)
    return {**local_view(detail), "card": detail["card"],
            "decisions": [local_decision(decision) for decision in detail["decisions"]]}


def _pick(gates: GateStore, record: RunRecord, gate_id: str | None) -> Gate:
    """For show: any gate of the run by name, or its only open one (or its only gate)."""
    every = gates.gates(record.id)
    if gate_id is None and len(every) == 1:
        return every[0]
    if gate_id is not None:
        for gate in every:
            if gate.gate_id == gate_id:
                return gate
    from lg.approvals.decide import resolve_gate  # noqa: PLC0415

    if record.finished_for_good:
        raise InvalidInput(f"run {record.id} has gates {', '.join(g.gate_id for g in every) or 'none'}; name one")
    return resolve_gate(gates, record, gate_id)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.argument("gate_id", metavar="[GATE]", required=False)
@click.option("--comment", help="Why you approve (kept in the audit log).")
@key_option
@digest_option
@signed_option
@sign_only_option
@json_option
@server_options
def approve(run_id: str, gate_id: str | None, comment: str | None, key: Path | None, digest: str | None,
            signed: Path | None, sign_only: Path | None, as_json: bool, server: str | None,
            token_file: Path | None) -> int:
    """Approve a gate of RUN (GATE may be left out when the run has one open gate).

    The decision is bound to the gate's digest: if what it guards changed, it does not apply.
    """
    return _decide(run_id, gate_id, "approve", comment, key, digest, signed, sign_only, as_json,
                   _remote(server, token_file))


@click.command()
@click.argument("run_id", metavar="RUN")
@click.argument("gate_id", metavar="[GATE]", required=False)
@click.option("--reason", required=True, help="Why you reject (kept in the audit log, shown to the run).")
@key_option
@digest_option
@signed_option
@sign_only_option
@json_option
@server_options
def reject(run_id: str, gate_id: str | None, reason: str, key: Path | None, digest: str | None,
           signed: Path | None, sign_only: Path | None, as_json: bool, server: str | None,
           token_file: Path | None) -> int:
    """Reject a gate of RUN: the step does not run, or its held effects are discarded; the run stops (exit 4)."""
    return _decide(run_id, gate_id, "reject", reason, key, digest, signed, sign_only, as_json,
                   _remote(server, token_file))


def _decide(run_id: str, gate_id: str | None, verdict: Verdict, comment: str | None, key: Path | None,
            digest: str | None, signed_file: Path | None, sign_only: Path | None, as_json: bool,
            remote: RemoteGates | None) -> int:
    from lg.approvals.decide import (  # noqa: PLC0415
        SignedDecision,
        decide,
        digest_prefix,
        resolve_gate,
        sign_decision,
    )

    if digest is not None:
        digest = digest_prefix(digest)  # before anything is read or signed: an empty prefix matched every gate
    if signed_file is not None and (key is not None or sign_only is not None):
        raise InvalidInput("--signed submits a decision signed elsewhere; it goes without --key and --sign-only")
    if sign_only is not None and key is None:
        raise InvalidInput("--sign-only needs --key (the key to sign with)")
    if remote is not None:
        from lg.cli.decide_remote import RemoteDecision, decide_remote  # noqa: PLC0415

        return decide_remote(remote, RemoteDecision(run_id, gate_id, verdict, comment, key, digest, signed_file,
                                                    sign_only), as_json)
    store, gates = _stores()
    store.require_intact_audit()
    record = store.run(run_id)
    gate = resolve_gate(gates, record, gate_id)
    if digest is not None and not gate.digest.startswith(digest):
        raise InvalidInput(f"--digest {digest}: gate {gate.gate_id} has digest {gate.digest[:16]}; what you "
                           "reviewed is not what would be approved")
    signed = SignedDecision.read(signed_file) if signed_file else None
    if key is not None:
        signed = sign_decision(gate, verdict, comment, key)
        if sign_only is not None:
            from lg.cli.decide_remote import write_signed  # noqa: PLC0415

            return write_signed(signed, gate.gate_id, sign_only)
    from lg.config.project import load_project_config  # noqa: PLC0415

    with webhook_courier(load_project_config()):
        settled = decide(gates, record, gate, verdict, comment, signed=signed, expected_digest=digest)
    if as_json:
        emit_json(gate_view(settled, record))
        return ExitCode.OK
    click.echo(f"gate {settled.gate_id} of run {record.id}: {verdict} recorded; gate is {settled.status}"
               + (f" ({settled.outcome})" if settled.outcome else ""))
    if settled.is_open:
        have = len({d.approver for d in gates.decisions(settled) if d.verdict == "approve"})
        click.echo(f"  {have} of {settled.rules.count} approvals so far")
    elif not store.run(record.id).process_alive:
        click.echo(f"  no lg process is waiting on this run; continue it with: lg resume {record.id}")
    return ExitCode.OK

