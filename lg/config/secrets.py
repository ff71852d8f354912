"""Secret values: read only when a run starts, never printed, masked in every output and record."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lg.errors import InvalidInput, Location
from lg.model import Pipeline, SecretSpec

MASK = "***"
MIN_MASKED_LENGTH = 3
"""Shorter values are still passed to steps but cannot be masked without garbling all output; warn instead."""


@dataclass(frozen=True)
class SecretValues:
    """Secret values by name. Its repr never shows a value."""

    values: Mapping[str, str] = field(repr=False)

    def __repr__(self) -> str:
        return f"SecretValues({', '.join(sorted(self.values))})"

    def masker(self) -> Masker:
        return Masker(self.values.values())

    def too_short_to_mask(self) -> list[str]:
        return sorted(name for name, value in self.values.items() if 0 < len(value) < MIN_MASKED_LENGTH)


def resolve_secrets(pipeline: Pipeline, environ: Mapping[str, str]) -> SecretValues:
    values = {spec.name: _read(spec, pipeline.path, environ) for spec in pipeline.secrets}
    return SecretValues(values)


def _read(spec: SecretSpec, pipeline_path: Path, environ: Mapping[str, str]) -> str:
    where = Location(pipeline_path, key_path=f"secrets.{spec.name}")
    if spec.from_file is not None:
        try:
            return spec.from_file.read_text().rstrip("\n")
        except OSError as error:
            raise InvalidInput(f"secret {spec.name}: cannot read {spec.from_file}: {error.strerror}",
                               where) from error
        except UnicodeDecodeError as error:
            raise InvalidInput(f"secret {spec.name}: {spec.from_file} is not UTF-8 text", where) from error
    variable = spec.from_env or spec.name
    if variable not in environ:
        raise InvalidInput(f"secret {spec.name}: environment variable {variable} is not set", where)
    return environ[variable]


class Masker:
    """Replaces every secret value (and every long line of a multi-line one) with ***."""

    def __init__(self, values: Iterable[str]) -> None:
        pieces: set[str] = set()
        for value in values:
            if len(value) >= MIN_MASKED_LENGTH:
                pieces.add(value)
            # A key printed line by line must not leak either.
            pieces.update(line for line in value.splitlines() if len(line.strip()) >= 8)
        ordered = sorted(pieces, key=len, reverse=True)  # longest first, so a prefix never half-masks
        self._pattern = re.compile("|".join(re.escape(p) for p in ordered)) if ordered else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text

    def bytes(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
