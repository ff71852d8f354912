"""`lg.yaml`: project defaults, found by walking up from the working directory as git finds `.git`."""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lg.config.locations import default_cache_dir, default_state_dir
from lg.config.pipeline_schema import MAX_PARALLEL_SCHEMA, image_name
from lg.config.schema_check import check_schema
from lg.config.yamlsource import SourceDoc, load_yaml
from lg.errors import InvalidInput, InvalidInputs
from lg.model import (
    HYPERVISOR_CHOICES,
    ModelPrice,
    PoolSettings,
    ProjectConfig,
    ProjectPaths,
    StepCacheLimits,
    WebhookSpec,
)

PROJECT_FILE = "lg.yaml"

BUILTIN_ROOT = Path(__file__).resolve().parent.parent / "shipped"
"""The profiles/, schemas/ and images/ shipped with lg. In a checkout (and its editable install) these are
symbolic links to the repository's top-level folders, the source of truth; a wheel carries copies of them as
package data (pyproject.toml), so an installed lg finds them with no checkout anywhere."""

ACCELERATORS = ("auto", "kvm", "tcg")


def project_schema() -> dict[str, Any]:
    dir_field = {"type": "string", "minLength": 1}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://luminaguard.dev/schemas/lg.schema.json",
        "title": "LuminaGuard project configuration (lg.yaml)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "$schema": {"type": "string"},
            "hypervisor": {"enum": list(HYPERVISOR_CHOICES),
                           "description": "default VM backend; auto: the best one this host can run"},
            "accelerator": {"enum": list(ACCELERATORS), "description": "auto probes KVM, falls back to TCG"},
            "image": image_name("default guest image recipe name (images/NAME.yaml)"),
            "profile": {"type": "string", "minLength": 1, "description": "default VM profile"},
            "policy": {"type": "string", "minLength": 1, "description": "default risk policy"},
            "state_dir": {**dir_field, "description": "run records and logs; relative to lg.yaml"},
            "state": {"type": "string", "pattern": "^postgres(ql)?://",
                      "description": "the state store as a postgresql:// URL (psycopg/libpq form): runs, gates, "
                                     "tokens and the audit log in that PostgreSQL database instead of SQLite in "
                                     "state_dir, which keeps step logs and held effects; LG_STATE_URL wins"},
            "cache_dir": {**dir_field, "description": "built guest images, keyed by content digest"},
            "max_parallel": MAX_PARALLEL_SCHEMA,
            "server": {"type": "string", "pattern": "^https?://[^/?#]+(/[^?#]*)?$",
                       "description": "the lg serve the client commands talk to (--server and LG_SERVER win); "
                                      "the token never goes here: LG_TOKEN or --token-file"},
            "pool": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "min_idle": {"type": "integer", "minimum": 0, "maximum": 64,
                                 "description": "ready VMs kept per key even when no run announced steps"},
                    "max_idle": {"type": "integer", "minimum": 0, "maximum": 64,
                                 "description": "ready VMs kept per key at most"},
                    "max_active": {"type": "integer", "minimum": 1, "maximum": 256,
                                   "description": "VMs leased (or being made) at once; further leases queue"},
                    "lease_timeout": {"type": "number", "exclusiveMinimum": 0,
                                      "description": "seconds a queued lease waits before failing (exit 5)"},
                    "snapshots": {"type": "boolean",
                                  "description": "restore VMs from template snapshots and keep them ready "
                                                 "(default true); false cold-boots every step's VM when it "
                                                 "starts"},
                },
            },
            "model_prices": {
                "type": "object",
                "description": "USD per million tokens for models litellm's price map does not know (agent steps)",
                "additionalProperties": {
                    "type": "object", "additionalProperties": False, "required": ["input", "output"],
                    "properties": {"input": {"type": "number", "minimum": 0},
                                   "output": {"type": "number", "minimum": 0}},
                },
            },
            "webhooks": {
                "type": "array",
                "maxItems": 16,
                "description": "where gate events are POSTed as signed JSON (docs/approvals.md)",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["url", "secret_env"],
                    "properties": {
                        "url": {"type": "string", "pattern": "^https?://[^\\s]+$", "maxLength": 2048},
                        "secret_env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                                       "description": "environment variable holding the HMAC key"},
                        "events": {"type": "array", "minItems": 1, "uniqueItems": True,
                                   "items": {"enum": ["gate.opened", "gate.decided"]}},
                    },
                },
            },
            "step_cache": {
                "type": "object",
                "additionalProperties": False,
                "description": "limits of the cache that steps' `cache:` fill (under state_dir/cache)",
                "properties": {
                    "max_entry_mib": {"type": "integer", "minimum": 1,
                                      "description": "a bigger entry is not saved (the step says so)"},
                    "max_total_mib": {"type": "integer", "minimum": 1,
                                      "description": "past this the least recently used entries are removed"},
                },
            },
            "paths": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "vm_profiles": dir_field,
                    "risk_policies": dir_field,
                    "seccomp": dir_field,
                    "apparmor": dir_field,
                    "images": dir_field,
                },
            },
        },
    }


def find_project_file(start: Path) -> Path | None:
    """The nearest lg.yaml in `start` or one of its parents."""
    directory = start.resolve()
    for candidate in (directory, *directory.parents):
        path = candidate / PROJECT_FILE
        if path.is_file():
            return path
    return None


def load_project_config(start: Path | None = None) -> ProjectConfig:
    """The project configuration for `start` (default: the working directory); built-in defaults if none."""
    path = find_project_file(start or Path.cwd())
    if path is None:
        return _build(None, {}, (start or Path.cwd()).resolve())
    return load_project_file(path)


def project_paths_for(directory: Path) -> ProjectPaths:
    """Where names used by a file in `directory` are looked up: the lg.yaml around it says (a file loaded on its
    own, by `lg validate FILE`; a run passes its project's paths instead)."""
    return load_project_config(directory).paths


def load_project_file(path: Path) -> ProjectConfig:
    doc = load_yaml(path)
    if not isinstance(doc.data, dict):
        raise doc.error((), "lg.yaml must be a mapping")
    errors = check_schema(doc, project_schema())
    if errors:
        raise InvalidInputs(errors)
    config = _build(doc, doc.data, path.resolve().parent)
    if config.pool.min_idle > config.pool.max_idle:
        raise doc.error(("pool", "min_idle"), "min_idle is larger than max_idle")
    return config


def _build(doc: SourceDoc | None, data: dict[str, Any], root: Path) -> ProjectConfig:
    paths = data.get("paths", {})
    pool = data.get("pool", {})

    def under_root(value: str | None, default: Path) -> Path:
        return (root / Path(value).expanduser()).resolve() if value else default

    cache_env = os.environ.get("LG_CACHE_DIR")
    state_env_url = os.environ.get("LG_STATE_URL")
    state_url: str | None = state_env_url or data.get("state")
    if state_env_url and not state_env_url.startswith(("postgresql://", "postgres://")):
        # not echoed: a URL may hold a password
        raise InvalidInput("LG_STATE_URL is not a postgresql:// URL (for a state directory, use LG_STATE_DIR)")
    state_env = os.environ.get("LG_STATE_DIR")
    return ProjectConfig(
        source=doc.path if doc else None,
        root=root,
        hypervisor=data.get("hypervisor", "qemu"),
        accelerator=data.get("accelerator", "auto"),
        image=data.get("image", "default"),
        profile=data.get("profile", "default"),
        policy=data.get("policy", "default"),
        state_dir=Path(state_env) if state_env else under_root(
            data.get("state_dir"), root / ".lg" if doc else default_state_dir()),
        cache_dir=Path(cache_env) if cache_env else under_root(data.get("cache_dir"), default_cache_dir()),
        pool=PoolSettings(
            min_idle=pool.get("min_idle", 0),
            max_idle=pool.get("max_idle", 2),
            max_active=pool.get("max_active", 8),
            lease_timeout=float(pool.get("lease_timeout", 120)),
            snapshots=bool(pool.get("snapshots", True)),
        ),
        step_cache=StepCacheLimits(**data.get("step_cache", {})),
        webhooks=tuple(WebhookSpec(hook["url"], hook["secret_env"],
                                   tuple(hook.get("events", ("gate.opened", "gate.decided"))))
                       for hook in data.get("webhooks", ())),
        max_parallel=data.get("max_parallel"),
        state_url=state_url,
        server=data.get("server"),
        model_prices=MappingProxyType({model: ModelPrice(float(price["input"]), float(price["output"]))
                                       for model, price in data.get("model_prices", {}).items()}),
        paths=ProjectPaths(
            vm_profiles=_search_dirs(root, paths.get("vm_profiles"), "profiles/vm"),
            risk_policies=_search_dirs(root, paths.get("risk_policies"), "profiles/risk"),
            seccomp=_search_dirs(root, paths.get("seccomp"), "profiles/seccomp"),
            apparmor=_search_dirs(root, paths.get("apparmor"), "profiles/apparmor"),
            images=_search_dirs(root, paths.get("images"), "images"),
        ),
    )


def _search_dirs(root: Path, configured: str | None, default: str) -> tuple[Path, ...]:
    """The project's own directory first, then the one shipped with lg (each only once)."""
    own = (root / (configured or default)).resolve()
    builtin = (BUILTIN_ROOT / default).resolve()
    return (own,) if own == builtin else (own, builtin)


def resolve_named_file(name: str, search_dirs: tuple[Path, ...], relative_to: Path, kind: str) -> Path:
    """A profile/policy/recipe given by name (`strict`) or by path (`./policies/team.yaml`).

    Fails closed: a name that resolves to nothing is an error, never "no profile".
    """
    if "/" in name or name.endswith((".yaml", ".yml", ".json")):
        path = (relative_to / name).resolve()
        if not path.is_file():
            raise InvalidInput(f"{kind} file {name!r} not found (looked at {path})")
        return path
    for directory in search_dirs:
        for suffix in (".yaml", ".yml", ".json"):
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(d) for d in search_dirs)
    raise InvalidInput(f"no {kind} named {name!r} (looked in {looked})")
