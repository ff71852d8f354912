"""The client side of `lg pool serve` (not built yet: `connect` finds no daemon)."""

from __future__ import annotations

from typing import Any

from lg.model import ProjectConfig


def connect(config: ProjectConfig) -> Any:
    return None
