"""What the pipeline tests share: the `write` fixture's type, and the messages a pipeline file is refused with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lg.config.pipeline import load_pipeline
from lg.errors import InvalidInput, InvalidInputs

Write = Callable[[str, str | bytes], Path]


def errors_of(path: Path) -> list[str]:
    """Every error loading the pipeline at `path` reports (it must report at least one)."""
    with pytest.raises(InvalidInput) as caught:
        load_pipeline(path)
    error = caught.value
    return [str(e) for e in error.errors] if isinstance(error, InvalidInputs) else [str(error)]
