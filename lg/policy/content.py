"""Rules that read what changed, not only which paths: filled in with the effects rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from lg.model import FileChange
from lg.policy.model import RiskPolicy, RuleMatch


class ContentReader(Protocol):
    def old(self, path: str) -> str | None: ...

    def new(self, path: str) -> str | None: ...


def content_matches(policy: RiskPolicy, changes: Sequence[FileChange],
                    content: ContentReader | None) -> list[RuleMatch]:
    return []
