"""Every file kind a user writes, and the function that builds its JSON Schema (the source of truth).

schemas/<name>.schema.json are generated from these with `scripts/gen-schemas`; a test fails when stale.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from lg.errors import InvalidInput

SCHEMAS: dict[str, str] = {
    "pipeline": "lg.config.pipeline_schema:pipeline_schema",
    "lg": "lg.config.project:project_schema",
    "risk-policy": "lg.policy.schema:policy_schema",
    "image-recipe": "lg.images.recipe:recipe_schema",
    "vm-profile": "lg.security.profile:vm_profile_schema",
}


def schema_names() -> list[str]:
    return sorted(SCHEMAS)


def build_schema(name: str) -> dict[str, Any]:
    target = SCHEMAS.get(name)
    if target is None:
        raise InvalidInput(f"unknown schema {name!r} (known: {', '.join(schema_names())})")
    module_name, _, attribute = target.partition(":")
    schema: dict[str, Any] = getattr(importlib.import_module(module_name), attribute)()
    return schema


def schema_text(name: str) -> str:
    return json.dumps(build_schema(name), indent=2, sort_keys=False) + "\n"


def schema_filename(name: str) -> str:
    return f"{name}.schema.json"


def write_all(directory: Path) -> list[Path]:
    """Regenerate every committed schema file (what scripts/gen-schemas runs)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in schema_names():
        path = directory / schema_filename(name)
        path.write_text(schema_text(name))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all(Path(__file__).resolve().parent.parent.parent / "schemas"):
        print(f"wrote {written_path}")
