"""Every file kind a user writes, and the function that builds its JSON Schema (the source of truth).

schemas/<name>.schema.json are generated from these with `scripts/gen-schemas`; a test fails when stale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lg.config.pipeline_schema import pipeline_schema
from lg.config.project import project_schema
from lg.errors import InvalidInput
from lg.images.recipe import recipe_schema
from lg.policy.schema import policy_schema
from lg.security.profile import vm_profile_schema

SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "pipeline": pipeline_schema,
    "lg": project_schema,
    "risk-policy": policy_schema,
    "image-recipe": recipe_schema,
    "vm-profile": vm_profile_schema,
}


def schema_names() -> list[str]:
    return sorted(SCHEMAS)


def build_schema(name: str) -> dict[str, Any]:
    builder = SCHEMAS.get(name)
    if builder is None:
        raise InvalidInput(f"unknown schema {name!r} (known: {', '.join(schema_names())})")
    return builder()


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
