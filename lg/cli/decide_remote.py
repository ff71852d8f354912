"""`lg approve` and `lg reject` with `--server`: the decision is posted to `lg serve`, bound to a digest.

The digest is the one given with --digest, else the one of the gate as it was fetched just now; the output says
which. `--key` signs here exactly as `lg approve --sign-only` does (the server verifies the signature against
the policy's allowed signers); `--signed FILE` posts a decision signed elsewhere. The identity recorded is the
token's (or the signer's), never a local user name: the server decides who is asking.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lg.cli.output import emit_json
from lg.errors import ExitCode, InvalidInput
from lg.runs.states import GateStatus

if TYPE_CHECKING:
    from lg.approvals.decide import SignedDecision
    from lg.client.gates import RemoteGates, Verdict


@dataclass(frozen=True)
class RemoteDecision:
    run_id: str
    gate_id: str | None
    verdict: Verdict
    comment: str | None
    key: Path | None
    digest: str | None  # --digest, already checked by digest_prefix
    signed_file: Path | None
    sign_only: Path | None


def decide_remote(remote: RemoteGates, wanted: RemoteDecision, as_json: bool) -> int:
    from lg.approvals.decide import SignedDecision, sign_shown_gate  # noqa: PLC0415
    from lg.client.gates import approvals_so_far, local_view  # noqa: PLC0415
    from lg.client.runs import RemoteRuns  # noqa: PLC0415

    shown = remote.pick(wanted.run_id, wanted.gate_id, to_decide=True)
    run_id, gate_id, digest = shown["run"], shown["gate"], shown["digest"]
    bound = wanted.digest or digest
    matches = digest.startswith(bound)
    signed: dict[str, str] | None = None
    if wanted.signed_file is not None:
        signed = SignedDecision.read(wanted.signed_file).to_json()
    elif wanted.key is not None:
        if not matches:
            # Never sign what was not reviewed. Without --sign-only the server is asked all the same, unsigned,
            # and refuses the stale digest in its own words (exit 4); nothing is recorded either way.
            if wanted.sign_only is not None:
                raise InvalidInput(f"--digest {bound}: gate {gate_id} has digest {digest[:16]}; what you reviewed "
                                   "is not what would be approved")
        else:
            made = sign_shown_gate(run_id, gate_id, digest, wanted.verdict, wanted.comment, wanted.key)
            if wanted.sign_only is not None:
                return write_signed(made, gate_id, wanted.sign_only)
            signed = made.to_json()
    settled = remote.decide(run_id, gate_id, wanted.verdict, bound, wanted.comment, signed)
    if as_json:
        emit_json(local_view(settled))
        return ExitCode.OK
    source = "given with --digest" if wanted.digest else "of the gate as fetched"
    click.echo(f"gate {gate_id} of run {run_id}: {wanted.verdict} recorded; gate is {settled['status']}"
               + (f" ({settled['outcome']})" if settled["outcome"] else ""))
    click.echo(f"  decided on digest {bound[:16]} ({source}) at {remote.where}")
    if settled["status"] == GateStatus.OPEN:
        click.echo(f"  {approvals_so_far(settled)} of {settled['count']} approvals so far")
    elif RemoteRuns(remote.client).nobody_waits(run_id):
        click.echo(f"  no lg process is waiting on this run; continue it with: lg resume {run_id}")
    return ExitCode.OK


def write_signed(signed: SignedDecision, gate_id: str, path: Path) -> int:
    """--sign-only: the signed decision, to be submitted elsewhere with --signed."""
    import json  # noqa: PLC0415

    path.write_text(json.dumps(signed.to_json(), indent=2) + "\n")
    click.echo(f"signed decision for gate {gate_id} written to {path}")
    return ExitCode.OK
