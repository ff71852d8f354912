"""The OpenAPI 3.1 document of `lg serve`, built from the same endpoint table the routes are made from (so the
two cannot drift), and published in the repository as docs/openapi.json (a test keeps it fresh)."""

from __future__ import annotations

import json
import re
from typing import Any

from lg import __version__
from lg.runs.states import GateStatus
from lg.server.api import ENDPOINTS, Endpoint

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or sorted(properties)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": _object({"status": {"type": "integer"}, "code": {"type": "string"},
                                        "message": {"type": "string"}})}),
    "Identity": _object({"name": {"type": "string"}, "role": {"enum": ["viewer", "approver", "runner", "admin"]},
                         "token": {"type": "string"}}),
    "Run": _object({
        "id": {"type": "string"}, "pipeline": {"type": "string"}, "pipeline_path": {"type": "string"},
        "workspace": {"type": "string"}, "status": {"type": "string"}, "shown_status": {"type": "string"},
        "created": {"type": "number"}, "started": _NULLABLE_NUMBER, "finished": _NULLABLE_NUMBER,
        "exit_code": {"type": ["integer", "null"]}, "error": _NULLABLE_STRING, "initiator": {"type": "string"},
        "cancel_requested": {"type": ["object", "null"]}}),
    "RunList": {"type": "array", "items": {"anyOf": [_ref("Run"), {
        "type": "object",
        "description": "with records=1: the run's whole record and abandoned (as `lg runs --json`)"}]}},
    "Step": _object({
        "step": {"type": "string"}, "name": {"type": "string"}, "position": {"type": "integer"},
        "status": {"type": "string"}, "attempts": {"type": "integer"}, "started": _NULLABLE_NUMBER,
        "finished": _NULLABLE_NUMBER, "exit_code": {"type": ["integer", "null"]},
        "accelerator": _NULLABLE_STRING, "image_digest": _NULLABLE_STRING, "boot_seconds": _NULLABLE_NUMBER,
        "outputs": {"type": "object", "additionalProperties": {"type": "string"}},
        "changes": {"type": "array", "items": {"type": "object"}}, "detail": _NULLABLE_STRING,
        "grade": {"type": ["object", "null"]}, "effects_grade": {"type": ["object", "null"]},
        "has_log": {"type": "boolean"}}),
    "StepList": _array("Step"),
    "Gate": _object({
        "run": {"type": "string"}, "gate": {"type": "string"}, "step": {"type": "string"},
        "kind": {"enum": ["explicit", "before", "effects", "tool"]},
        "status": {"enum": [status.value for status in GateStatus]},
        "level": {"enum": ["green", "yellow", "orange", "red"]},
        "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "created": {"type": "number"},
        "expires": _NULLABLE_NUMBER, "decided": _NULLABLE_NUMBER, "outcome": _NULLABLE_STRING,
        "approvers": {"type": "array", "items": {"type": "string"}}, "count": {"type": "integer"},
        "require_signature": {"type": "boolean"}, "allow_self_approval": {"type": "boolean"},
        "pipeline": _NULLABLE_STRING, "initiator": _NULLABLE_STRING,
        "page": {"type": "string", "description": "the gate's page on this server"}}),
    "GateList": _array("Gate"),
    "Decision": _object({
        "approver": {"type": "string"}, "verdict": {"enum": ["approve", "reject"]}, "comment": _NULLABLE_STRING,
        "signed": {"type": "boolean"}, "digest": {"type": "string"}, "ts": {"type": "number"}}),
    "GateDetail": {"allOf": [_ref("Gate"), _object({
        "card": {"type": "object", "description": "the diff card: level, rules, reasons, command (whole), "
                                                  "profile with relaxations, changes with per-file diffs, outputs"},
        "decisions": _array("Decision")})]},
    "RunDetail": {"allOf": [_ref("Run"), _object({"steps": _array("Step"), "gates": _array("Gate")})]},
    "RunStatus": _object({
        "run": {"type": "object", "description": "the run's whole record (as `lg runs --json`), with abandoned"},
        "steps": {"type": "array", "items": {"type": "object"}, "description": "each step's whole record"},
        "gates": {"type": "array", "items": _object({
            "gate": {"type": "string"}, "kind": {"type": "string"}, "status": {"type": "string"},
            "digest": {"type": "string"}, "level": _NULLABLE_STRING, "outcome": _NULLABLE_STRING})}}),
    "DecisionRequest": {
        "type": "object", "additionalProperties": False, "required": ["verdict", "digest"],
        "properties": {
            "verdict": {"enum": ["approve", "reject"]},
            "digest": {"type": "string", "pattern": "^[0-9a-f]{16,64}$",
                       "description": "the gate's digest as shown (at least its first 16 hex digits); a "
                                      "decision on any other digest is refused (409 stale_digest)"},
            "comment": {"type": "string", "maxLength": 4000, "description": "required to reject (the reason)"},
            "signed": {"type": "object", "required": ["payload", "signature"], "additionalProperties": False,
                       "description": "a decision signed with `lg approve --sign-only` (ssh-keygen -Y, namespace "
                                      "lg-approval@luminaguard); the approver is then the signer",
                       "properties": {"payload": {"type": "string"}, "signature": {"type": "string"}}}}},
    "Claim": {"allOf": [_ref("Run"), _object({"gates": _array("Gate"),
                                              "effects": {"type": "array", "items": {"type": "string"}}})]},
    "EffectsManifest": _object({
        "run": {"type": "string"}, "step": {"type": "string"}, "status": {"type": "string"},
        "has_held_files": {"type": "boolean"},
        "changes": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "kind": {"type": "string"}, "sha256": _NULLABLE_STRING,
            "download": _NULLABLE_STRING}}}}),
    "BlobStored": _object({"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "size": {"type": "integer"},
                           "created": {"type": "boolean", "description": "false: it was stored already"}}),
    "RunnerCall": {
        "type": "object", "additionalProperties": False, "required": ["method", "args"],
        "properties": {"method": {"type": "string", "description": "a store method (lg.server.runner_calls.CALLS)"},
                       "args": {"type": "object", "description": "its arguments by name, each checked"}}},
    "RunnerResult": _object({"result": {"description": "what the method returned: a run, step or gate record, a "
                                                       "list of them, or null"}}),
    "CancelRequest": {"type": "object", "additionalProperties": False, "required": ["reason"],
                      "properties": {"reason": {"type": "string", "maxLength": 4000}}},
    "AuditVerify": _object({"ok": {"type": "boolean"}, "records": {"type": "integer"},
                            "problems": {"type": "array", "items": _object({"seq": {"type": ["integer", "null"]},
                                                                           "message": {"type": "string"}})}}),
    "AuditRecord": _object({"seq": {"type": "integer"}, "ts": {"type": "number"}, "kind": {"type": "string"},
                            "run_id": _NULLABLE_STRING, "data": {"type": "object"}, "prev": {"type": "string"},
                            "hash": {"type": "string"}}),
    "AuditRecords": _array("AuditRecord"),
}

_ERRORS = {
    400: "malformed JSON, a missing or invalid field, or a bad path",
    401: "no token, or not a valid one",
    403: "the token's role does not allow this, the decision is not allowed, or its signature is refused",
    404: "no such run, step, gate or held file",
    409: "the gate's digest changed, it is already decided, the run cannot be claimed, or the call is refused "
         "by the run's state",
    413: "the request body is over the limit",
    503: "the audit log is damaged: no decision is added to it",
}


def _content(response: str) -> dict[str, Any]:
    if response == "text":
        return {"text/plain": {"schema": {"type": "string"}}}
    if response == "bytes":
        return {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {"application/json": {"schema": _ref(response)}}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    path_names = re.findall(r"{(\w+)(?::\w+)?}", endpoint.path)
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in path_names]
    parameters += [{"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
                   for name, text in endpoint.query]
    success = str(endpoint.success or (201 if endpoint.method == "POST" and endpoint.body else 200))
    responses: dict[str, Any] = {success: {"description": endpoint.summary, "content": _content(endpoint.response)}}
    for status in sorted({*endpoint.errors, 401, 403}):
        responses[str(status)] = {"description": _ERRORS[status],
                                  "content": {"application/json": {"schema": _ref("Error")}}}
    operation: dict[str, Any] = {
        "operationId": endpoint.name, "summary": endpoint.summary, "parameters": parameters,
        "responses": responses, "security": [{"token": []}],
        "x-lg-permission": endpoint.permission.value if endpoint.permission else None,
    }
    if endpoint.body:
        operation["requestBody"] = {"required": True, "content": _content(endpoint.body)}
    return operation


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        path = re.sub(r"{(\w+):\w+}", r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint)
    paths["/healthz"] = {"get": {"operationId": "health", "summary": "Liveness: the state store answers",
                                 "security": [], "responses": {"200": {"description": "ok"},
                                                               "503": {"description": "the store does not answer"}}}}
    paths["/metrics"] = {"get": {"operationId": "metrics", "summary": "Prometheus text format", "security": [],
                                 "responses": {"200": {"description": "metrics",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "LuminaGuard server (lg serve)", "version": __version__,
                 "description": "Runs, steps, logs, approval gates with their diff cards, decisions bound to a "
                                "gate's digest, resume claims, held-effect downloads and the audit log. "
                                "Authenticate with `Authorization: Bearer <token>` (`lg token create`). Roles: "
                                "viewer reads; approver also decides; runner also claims runs and downloads held "
                                "effects; admin does everything."},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"token": {"type": "http", "scheme": "bearer",
                                                     "description": "an API token from `lg token create`"}}},
    }


def text() -> str:
    """The document as published in docs/openapi.json."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"
