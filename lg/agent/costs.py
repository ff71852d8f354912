"""What an agent step spends: tokens in and out and US dollars, per model call, kept by lg (never by litellm's
process-wide budget, which one lg process running several steps would share).

Prices come from litellm's own map (loaded from the copy inside the package: LITELLM_LOCAL_MODEL_COST_MAP), or,
for a model that map does not know, from lg.yaml's `agent.prices`. A USD budget over a model with no price
at all cannot be kept, so such a step is refused at its first call (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lg.model import AgentBudget


@dataclass(frozen=True)
class Spend:
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    usd: float = 0.0
    unpriced_calls: int = 0  # calls whose cost nobody knows (counted in tokens only)

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.calls + other.calls, self.tokens_in + other.tokens_in, self.tokens_out + other.tokens_out,
                     self.usd + other.usd, self.unpriced_calls + other.unpriced_calls)

    def add(self, tokens_in: int, tokens_out: int, usd: float | None) -> Spend:
        return Spend(self.calls + 1, self.tokens_in + tokens_in, self.tokens_out + tokens_out,
                     self.usd + (usd or 0.0), self.unpriced_calls + (usd is None))

    def over(self, budget: AgentBudget) -> str | None:
        """Which limit this spend has reached, said with the numbers; None while under both."""
        if budget.tokens is not None and self.tokens >= budget.tokens:
            return f"token budget reached: {self.tokens} of {budget.tokens} tokens used"
        if budget.usd is not None and self.usd >= budget.usd:
            return f"cost budget reached: ${self.usd:.4f} of ${budget.usd:.4f} spent"
        return None

    def summary(self) -> str:
        unpriced = f", {self.unpriced_calls} call(s) unpriced" if self.unpriced_calls else ""
        return (f"{self.calls} model call(s), {self.tokens_in} tokens in, {self.tokens_out} out, "
                f"${self.usd:.4f}{unpriced}")

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "usd": round(self.usd, 8), "unpriced_calls": self.unpriced_calls}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Spend:
        return cls(int(data.get("calls", 0)), int(data.get("tokens_in", 0)), int(data.get("tokens_out", 0)),
                   float(data.get("usd", 0.0)), int(data.get("unpriced_calls", 0)))
