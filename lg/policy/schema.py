"""The JSON Schema of risk policy files (profiles/risk/*.yaml)."""

from __future__ import annotations

from typing import Any

from lg.config.pipeline_schema import duration_schema
from lg.policy.levels import LEVEL_NAMES

RULE_ID_PATTERN = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$"


def _strings(description: str = "", *, min_items: int = 1) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": min_items}
    if description:
        schema["description"] = description
    return schema


def _examples() -> dict[str, Any]:
    sample = {"description": "a command line (or {command, network: none | [host:port]}), or (effects rules) a "
                             "list of changes, or (relaxations) one, or (mcp rules) {server, tool, arguments}"}
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {"match": {"type": "array", "items": sample}, "no_match": {"type": "array", "items": sample}},
    }


def _command() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["program"],
        "properties": {
            "program": {"oneOf": [{"type": "string", "minLength": 1}, _strings("program names (globs)")]},
            "flags": {"type": "array", "minItems": 1, "items": _strings(),
                      "description": "groups of spellings; every group must be present, e.g. [[-r, --recursive]]"},
            "subcommand": {"oneOf": [{"type": "string", "minLength": 1}, _strings()]},
            "args": _strings("globs: some positional argument matches one"),
            "args_regex": {"type": "string", "minLength": 1, "description": "some argument matches (search)"},
            "dynamic_args": {"type": "boolean", "description": "some argument is a variable or substitution"},
            "piped_from": _strings("the command reads a pipe fed by one of these programs"),
            "via": _strings("the command runs through one of these wrappers or shells (sudo, sh, eval)"),
            "path": _strings("globs on the program as written with a directory (/tmp/**, ./bin/*)"),
            "untrusted_path": {"const": True, "description": "the program is given with a directory that is neither "
                                                             "the system's nor a conventional tool install (a venv, "
                                                             "node_modules/.bin): ./bin/ls is not ls"},
            "code_options": _strings("globs: the program runs code through one of these options "
                                     "(git -c core.pager, sort --compress-program, sed e)"),
            "inline": {"type": "array", "minItems": 1, "uniqueItems": True,
                       "items": {"enum": ["spawn", "delete", "dynamic", "unparsed"]},
                       "description": "what the program's inline code (python -c, perl -e, awk) does"},
            "network": {"type": "array", "minItems": 1, "uniqueItems": True,
                        "items": {"enum": ["fetch", "upload", "raw"]},
                        "description": "the command fetches, sends (uploads) or opens a raw connection"},
            "profile_network": {"type": "boolean",
                                "description": "the step's VM profile gives it some network (true) or none (false)"},
            "hosts_allowed": {"type": "boolean",
                              "description": "every host the command names is on the profile's allow-list"},
            "runs_download": {"const": True,
                              "description": "the command runs a file an earlier command of the script downloaded"},
        },
    }


def _effects() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            "paths": _strings("workspace-relative globs; ** crosses directories; no '/' matches at any depth"),
            "kinds": {"type": "array", "minItems": 1, "uniqueItems": True,
                      "items": {"enum": ["created", "modified", "deleted"]}},
            "executable": {"const": True, "description": "a file (not a symlink) becomes executable"},
            "setuid": {"const": True, "description": "a file becomes setuid or setgid"},
            "symlink_outside": {"const": True, "description": "a symlink points outside the workspace"},
            "count_over": {"type": "integer", "minimum": 0},
            "bytes_over": {"type": "integer", "minimum": 0},
            "content": {
                "type": "object", "additionalProperties": False, "minProperties": 1,
                "description": "conditions on what changed inside the files (all that are given must hold)",
                "properties": {
                    "added_regex": {"type": "string", "minLength": 1, "description": "some added line matches"},
                    "count_drops": {"type": "string", "minLength": 1,
                                    "description": "fewer matches of this regex after the change (hashes lost)"},
                    "changed_keys": _strings("JSON/TOML dotted keys (globs per level) whose value changed"),
                    "secrets": {"const": True, "description": "detect-secrets finds a secret in added content"},
                },
            },
        },
    }


def _mcp() -> dict[str, Any]:
    globs = {"oneOf": [{"type": "string", "minLength": 1}, _strings()]}
    condition = {
        "type": "object", "additionalProperties": False,
        "anyOf": [{"required": ["path"]}, {"required": ["glob"]}, {"required": ["regex"]}],
        "properties": {
            "path": {"type": "string", "pattern": "^(/.*)?$",
                     "description": "JSON pointer into the arguments (/a/b; * any one key or index, ** any "
                                    "number); absent: anywhere"},
            "glob": {"type": "string", "description": "some value at or under the path matches (whole value; "
                                                      "numbers, booleans and null as JSON text)"},
            "regex": {"type": "string", "minLength": 1, "description": "some value at or under the path "
                                                                       "matches (search)"},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["tool"],
        "description": "a call to an MCP tool by an agent step",
        "properties": {
            "server": {**globs, "description": "globs on the MCP server's name as the pipeline names it"},
            "tool": {**globs, "description": "globs on the tool's name"},
            "arguments": {"type": "array", "minItems": 1, "items": condition,
                          "description": "conditions on the call's arguments; every one must hold"},
        },
    }


def rule_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "level", "reason"],
        "properties": {
            "id": {"type": "string", "pattern": RULE_ID_PATTERN, "description": "stable, dotted: exec.destruct.rm_rf"},
            "level": {"enum": list(LEVEL_NAMES)},
            "reason": {"type": "string", "minLength": 1},
            "deny": {"type": "boolean", "description": "refuse outright instead of asking for approval"},
            "command": _command(),
            "redirect": {"type": "object", "additionalProperties": False, "required": ["targets"],
                         "properties": {"targets": _strings("path globs written by > or >>, or by an option or "
                                                            "argument naming a file the program writes"),
                                        "reads": {"type": "boolean", "description": "match input redirections "
                                                                                    "(<) instead"}}},
            "allow": _strings("programs known to be safe: green unless a risk rule matches them"),
            "environment": {
                "type": "object", "additionalProperties": False, "required": ["names"],
                "description": "an environment variable set for the step's commands (VAR=v cmd, env, export)",
                "properties": {"names": _strings("globs on the variable's name"),
                               "value_regex": {"type": "string", "minLength": 1,
                                               "description": "search in the value as written"}},
            },
            "effects": _effects(),
            "relaxation": {
                "type": "object", "additionalProperties": False, "required": ["kinds"],
                "properties": {"kinds": _strings("network, capability, seccomp_off, apparmor_off, memory, ..."),
                               "details": _strings("globs on the detail, e.g. CAP_SYS_*")},
            },
            "mcp": _mcp(),
            "examples": _examples(),
        },
    }


def policy_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://luminaguard.dev/schemas/risk-policy.schema.json",
        "title": "LuminaGuard risk policy",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "description": {"type": "string"},
            "extends": {"type": "string", "minLength": 1, "description": "a policy name or path to build on"},
            "disable": _strings("rule ids of the extended policy to drop"),
            "default_level": {"enum": list(LEVEL_NAMES), "description": "for programs no rule mentions"},
            "mcp_default_level": {"enum": [name for name in LEVEL_NAMES if name != "green"],
                                  "description": "for MCP tool calls no rule matches (never green: only a rule "
                                                 "that names a call can make it green)"},
            "thresholds": {
                "type": "object", "additionalProperties": False,
                "properties": {"before": {"enum": list(LEVEL_NAMES)}, "effects": {"enum": list(LEVEL_NAMES)}},
            },
            "rules": {"type": "array", "items": rule_schema()},
            "approvals": _approvals(),
            "required_gates": {"type": "array", "items": _required_gate(),
                               "description": "gates every pipeline under this policy gets; none can remove them"},
        },
    }


def _approvers() -> dict[str, Any]:
    return _strings("approver names (SSH principals in allowed_signers) or group:NAME")


def _approvals() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "who may decide gates, and how decisions must be signed",
        "properties": {
            "allowed_signers": {"type": "string", "minLength": 1,
                                "description": "OpenSSH allowed_signers file, relative to this policy"},
            "require_signature": {"type": "boolean",
                                  "description": "refuse unsigned decisions (default: true when allowed_signers "
                                                 "is set)"},
            "allow_self_approval": {"type": "boolean",
                                    "description": "may the run's initiator decide its gates (default false)"},
            "groups": {"type": "object", "propertyNames": {"pattern": "^[a-z0-9_-]+$"},
                       "additionalProperties": _approvers()},
            "timeout": duration_schema("how long a gate waits by default"),
            "on_timeout": {"enum": ["reject", "fail", "continue"]},
        },
    }


def _required_gate() -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "reason"],
        "anyOf": [{"required": ["steps"]}, {"required": ["paths"]}],
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9_.-]+$"},
            "reason": {"type": "string", "minLength": 1},
            "steps": _strings("step id globs: these steps wait for approval before they run"),
            "paths": _strings("workspace path globs: a step changing any of them has its effects held"),
            "approvers": _approvers(),
            "count": {"type": "integer", "minimum": 1, "maximum": 100},
        },
    }
