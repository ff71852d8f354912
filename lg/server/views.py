"""Runs, steps, gates and decisions as the API returns them (plain JSON values)."""

from __future__ import annotations

from typing import Any

from lg.runs.gates import Decision, Gate
from lg.runs.store import RunRecord, StepRecord


def run_view(record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id, "pipeline": record.pipeline, "pipeline_path": record.pipeline_path,
        "workspace": record.workspace, "status": record.status.value, "shown_status": record.shown_status,
        "created": record.created, "started": record.started, "finished": record.finished,
        "exit_code": record.exit_code, "error": record.error, "initiator": record.initiator,
        "cancel_requested": record.cancel_requested,
    }


def step_view(step: StepRecord) -> dict[str, Any]:
    return {
        "step": step.step_id, "name": step.name, "position": step.position, "status": step.status.value,
        "attempts": step.attempts, "started": step.started, "finished": step.finished, "exit_code": step.exit_code,
        "accelerator": step.accelerator, "image_digest": step.image_digest, "boot_seconds": step.boot_seconds,
        "outputs": step.outputs, "changes": step.changes, "detail": step.detail, "grade": step.grade,
        "effects_grade": step.effects_grade, "has_log": step.log_path is not None,
    }


def gate_view(gate: Gate, record: RunRecord | None = None) -> dict[str, Any]:
    """The same fields as `lg pending --json` (lg.cli.approvals.gate_view), so the CLI can become a client."""
    return {
        "run": gate.run_id, "gate": gate.gate_id, "step": gate.step_id, "kind": gate.kind,
        "status": gate.status.value, "level": gate.card.get("level"), "digest": gate.digest,
        "created": gate.created, "expires": gate.expires, "decided": gate.decided, "outcome": gate.outcome,
        "approvers": list(gate.rules.approvers), "count": gate.rules.count,
        "require_signature": gate.rules.require_signature,
        "allow_self_approval": gate.rules.allow_self_approval,
        "pipeline": record.pipeline if record else None, "initiator": record.initiator if record else None,
        "page": f"/runs/{gate.run_id}/gates/{gate.gate_id}",
    }


def decision_view(decision: Decision) -> dict[str, Any]:
    return {"approver": decision.approver, "verdict": decision.verdict, "comment": decision.comment,
            "signed": decision.signature is not None, "digest": decision.digest, "ts": decision.ts}
