"""Where lg keeps things when nothing says otherwise: the cache (images, templates, verdicts) and run state.

Its own module because both the project loader and the verdict cache need it, and the verdict cache is used
while a project file is being validated."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "luminaguard"


def default_state_dir() -> Path:
    """Without an lg.yaml there is no project root, so runs must not land wherever lg was started."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "luminaguard"
