"""The JSON Schema of pipeline files: the one source of truth for their shape.

schemas/pipeline.schema.json is generated from this (`lg schema pipeline`); a test fails when it is stale.
Rules a schema cannot say (unknown `needs`, cycles, template errors) live in `lg.config.pipeline`.
"""

from __future__ import annotations

from typing import Any

from lg.config.schema_check import MESSAGE
from lg.model import HYPERVISOR_CHOICES, INPUT_TYPES

STEP_ID_PATTERN = "^[a-z0-9_-]+$"
ENV_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"
INPUT_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"  # read as inputs.NAME in templates: an identifier
SECRET_NAME_PATTERN = "^[A-Z_][A-Z0-9_]*$"  # noqa: S105 - a name pattern, not a secret
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d)\s*)+$"
# An image is named by its recipe (images/NAME.yaml), never given as a path: `image: ../../../../etc/shadow`
# was accepted (issue #20 item 8). A name ending in .yaml would be read as a path, so that is refused too.
IMAGE_NAME_PATTERN = r"^(?!.*\.(ya?ml|json)$)[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# An artifact is a path or glob inside the workspace: relative, no '..' segment, no '~'.
ARTIFACT_PATTERN = r"^(?![/~])(?!(.*/)?\.\.(/|$))[^\x00]+$"

MAX_RETRIES = 10


def duration_schema(description: str) -> dict[str, Any]:
    return {
        "description": f"{description}: seconds, or text like '90s', '10m', '1h30m'",
        "oneOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": DURATION_PATTERN},
        ],
    }


def _env_map(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "type": "object",
        "propertyNames": {"pattern": ENV_NAME_PATTERN},
        "additionalProperties": {"type": ["string", "number", "boolean"]},
    }


def image_name(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": IMAGE_NAME_PATTERN, "description": description,
            MESSAGE: "an image is named by its recipe (images/NAME.yaml): up to 64 letters, digits, '.', '_' or "
                     "'-', starting with a letter or digit; not a path"}


def _name_ref(description: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "description": description}


def _approve() -> dict[str, Any]:
    return {
        "description": "an explicit approval gate before this step",
        "oneOf": [
            {"type": "boolean"},
            {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "approvers": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "description": "user names, or group:NAME; empty means any allowed signer",
                    },
                    "count": {"type": "integer", "minimum": 1, "maximum": 100},
                    "timeout": duration_schema("how long the gate waits"),
                    "on_timeout": {"enum": ["reject", "fail", "continue"]},
                    "reason": {"type": "string"},
                },
            },
        ],
    }


def _outputs() -> dict[str, Any]:
    return {
        "description": "names read from key=value lines in $LG_OUTPUT, or name: file path",
        "oneOf": [
            {"type": "array", "items": {"type": "string", "pattern": ENV_NAME_PATTERN}, "uniqueItems": True},
            {
                "type": "object",
                "propertyNames": {"pattern": ENV_NAME_PATTERN},
                "additionalProperties": {"type": "string", "minLength": 1},
            },
        ],
    }


MAX_PARALLEL = 256
MAX_PARALLEL_SCHEMA: dict[str, Any] = {
    "type": "integer", "minimum": 1, "maximum": MAX_PARALLEL,
    "description": "how many steps run at once (each in its own VM); default: lg.yaml's, else from the pool's "
                   "max_active and the host's cores",
}
MATRIX_KEYWORDS = ("exclude", "include", "max_parallel", "fail_fast")
"""Keys of `matrix:` that are not axes."""


def _matrix() -> dict[str, Any]:
    scalar = {"type": ["string", "number", "boolean"]}
    combination = {"type": "object", "additionalProperties": scalar, "minProperties": 1,
                   "propertyNames": {"pattern": "^[a-z_][a-z0-9_]*$"}}
    return {
        "description": "expands the step once per combination of values",
        "type": "object",
        "minProperties": 1,
        "propertyNames": {"pattern": "^[a-z_][a-z0-9_]*$"},
        "properties": {
            "exclude": {"type": "array", "items": combination,
                        "description": "combinations left out (every value given must match)"},
            "include": {"type": "array", "items": combination,
                        "description": "values added to the combinations they match without changing an axis "
                                       "value, or else one more combination"},
            "max_parallel": {**MAX_PARALLEL_SCHEMA,
                             "description": "how many of this matrix's steps run at once (default: no limit of "
                                            "its own)"},
            "fail_fast": {"type": "boolean",
                          "description": "one failing step of the matrix cancels the others (default: the "
                                         "pipeline's fail_fast)"},
        },
        "additionalProperties": {"type": "array", "items": scalar, "minItems": 1, "maxItems": 256},
    }


def step_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["id"],
        "properties": {
            "id": {"type": "string", "pattern": STEP_ID_PATTERN, "maxLength": 64},
            "name": {"type": "string"},
            "run": {"type": "string", "minLength": 1, "description": "shell script, run with /bin/sh -e"},
            "uses": {"type": "string", "minLength": 1, "description": "a step kind instead of `run`: agent"},
            "with": agent_schema(),
            "needs": {
                "oneOf": [
                    {"type": "string", "pattern": STEP_ID_PATTERN},
                    {"type": "array", "items": {"type": "string", "pattern": STEP_ID_PATTERN}},
                ],
            },
            "if": {"type": ["string", "boolean"],
                   "description": "a jinja2 expression; may call always(), success(), failure(), cancelled() "
                                  "(without any: success() and the expression)"},
            "env": _env_map("environment variables for this step"),
            "workdir": {"type": "string", "minLength": 1, "description": "relative to the workspace"},
            "timeout": duration_schema("the step's time limit; the VM is killed past it"),
            "retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
            "continue_on_error": {"type": "boolean"},
            "outputs": _outputs(),
            "artifacts": {"type": "array", "items": {
                "type": "string", "pattern": ARTIFACT_PATTERN,
                "description": "a path or glob relative to the workspace",
                MESSAGE: "an artifact is a path or glob inside the workspace: relative, without '..' or a "
                         "leading '/' or '~'"}},
            "artifacts_from": {
                "type": "object",
                "description": "artifacts of needed steps, put into this step's VM: step id -> absolute guest "
                               "path (null: /artifacts/STEP)",
                "propertyNames": {"pattern": STEP_ID_PATTERN},
                "additionalProperties": {"type": ["string", "null"], "minLength": 1},
            },
            "cache": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "paths"],
                "description": "directories restored before the step runs and saved after it succeeds",
                "properties": {
                    "key": {"type": "string", "minLength": 1, "maxLength": 512,
                            "description": "a template; hashFiles('glob', ...) hashes workspace files"},
                    "paths": {"type": "array", "minItems": 1, "maxItems": 32,
                              "items": {"type": "string", "minLength": 1,
                                        "description": "a directory or file relative to the workspace"}},
                },
            },
            "matrix": _matrix(),
            "profile": _name_ref("VM profile name or path, overriding the pipeline's"),
            "hypervisor": {"enum": list(HYPERVISOR_CHOICES)},
            "image": image_name("guest image recipe name, overriding the pipeline's"),
            "approve": _approve(),
        },
    }


def agent_schema() -> dict[str, Any]:
    """The `with:` keys of `uses: agent` (docs/agents.md)."""
    limit = {"type": "number", "exclusiveMinimum": 0}
    return {
        "type": "object",
        "description": "the settings of a `uses:` step kind; for agent: model, task, tools, mcp, max_turns, "
                       "budget, api_key, api_base",
        "additionalProperties": False,
        "required": ["model", "task"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "description": "a litellm model name, e.g. openai/gpt-4o"},
            "api_base": {"type": "string", "pattern": "^https?://", "description": "an OpenAI-compatible server"},
            "task": {"type": "string", "minLength": 1, "description": "what the agent is asked to do (templated)"},
            "tools": {
                "type": "array", "uniqueItems": True,
                "items": {"enum": ["shell", "read_file", "write_file", "list_files"]},
                "description": "built-in tools, each run inside the step's VM",
            },
            "mcp": {
                "type": "array",
                "items": {
                    "type": "object", "additionalProperties": False, "required": ["name", "url"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
                        "url": {"type": "string", "pattern": "^https?://"},
                    },
                },
                "description": "MCP servers over Streamable HTTP, called from lg on the host",
            },
            "max_turns": {"type": "integer", "minimum": 1, "maximum": 1000},
            "budget": {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "properties": {"usd": limit, "tokens": {"type": "integer", "minimum": 1}},
            },
            "api_key": {"type": "string", "pattern": SECRET_NAME_PATTERN,
                        "description": "the name of a declared secret holding the model's API key"},
        },
    }


def _secrets() -> dict[str, Any]:
    source = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "env": {"type": "string", "pattern": ENV_NAME_PATTERN},
            "file": {"type": "string", "minLength": 1},
        },
    }
    return {
        "description": "secret names; values come from the host environment or a file, never printed",
        "oneOf": [
            {"type": "array", "items": {"type": "string", "pattern": SECRET_NAME_PATTERN}, "uniqueItems": True},
            {
                "type": "object",
                "propertyNames": {"pattern": SECRET_NAME_PATTERN},
                "additionalProperties": source,
            },
        ],
    }


def _inputs() -> dict[str, Any]:
    scalar = {"type": ["string", "number", "boolean"]}
    return {
        "description": "values a run is given with `lg run --input NAME=VALUE`, read in templates as inputs.NAME",
        "type": "object",
        "propertyNames": {"pattern": INPUT_NAME_PATTERN},
        "additionalProperties": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": list(INPUT_TYPES), "description": "how the value is read (default: string)"},
                "default": {**scalar, "description": "the value when none is given; without one the input is "
                                                     "required"},
                "description": {"type": "string"},
                "options": {"type": "array", "items": {"type": ["string", "number"]}, "minItems": 1,
                            "uniqueItems": True, "description": "the values a choice accepts"},
            },
        },
    }


def pipeline_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://luminaguard.dev/schemas/pipeline.schema.json",
        "title": "LuminaGuard pipeline",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "steps"],
        "properties": {
            "$schema": {"type": "string"},
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "hypervisor": {"enum": list(HYPERVISOR_CHOICES)},
            "image": image_name("guest image recipe name (images/NAME.yaml); default from lg.yaml"),
            "profile": _name_ref("VM profile name (profiles/vm/NAME.yaml) or path"),
            "policy": _name_ref("risk policy name (profiles/risk/NAME.yaml) or path"),
            "inputs": _inputs(),
            "vars": {
                "type": "object",
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "env": _env_map("environment variables for every step"),
            "secrets": _secrets(),
            "timeout": duration_schema("the whole run's time limit"),
            "max_parallel": MAX_PARALLEL_SCHEMA,
            "fail_fast": {"type": "boolean",
                          "description": "a failing step cancels the running steps and skips those not started "
                                         "(default true); false: only the steps that need it are skipped"},
            "steps": {"type": "array", "minItems": 1, "items": step_schema()},
        },
    }
