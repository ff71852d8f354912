"""Risk levels, ordered the same way everywhere: green < yellow < orange < red."""

from __future__ import annotations

from enum import IntEnum

from lg.errors import InvalidInput


class RiskLevel(IntEnum):
    GREEN = 0
    YELLOW = 1
    ORANGE = 2
    RED = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> RiskLevel:
        try:
            return cls[text.upper()]
        except KeyError:
            raise InvalidInput(f"unknown risk level {text!r} (green, yellow, orange, red)") from None


LEVEL_NAMES = tuple(level.label for level in RiskLevel)
