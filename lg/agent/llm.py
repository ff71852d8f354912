"""The one module that talks to litellm: a chat completion with tools, its usage and its cost.

litellm is imported here, on first use: `lg --help` and `lg validate` never load it (tests/cli check the modules
a plain command imports). Its price map is read from the copy inside the package, never fetched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from lg.errors import EnvironmentUnfit, LgError
from lg.model import ModelPrice

MODEL_TIMEOUT = 300.0
"""Seconds one model call may take."""


class ModelError(LgError):
    """The model could not be called, or answered with something that is not a chat completion."""


@dataclass(frozen=True)
class ModelSettings:
    model: str
    api_base: str | None
    api_key: str | None  # the secret's value: given to litellm, never to a VM, never printed
    prices: Mapping[str, ModelPrice]

    def __repr__(self) -> str:
        return f"ModelSettings(model={self.model!r}, api_base={self.api_base!r}, api_key=***)"


@dataclass(frozen=True)
class ModelReply:
    message: dict[str, Any]  # the assistant message, as it goes back into the conversation
    tokens_in: int
    tokens_out: int
    usd: float | None  # None: no price known for the model

    @property
    def content(self) -> str:
        return str(self.message.get("content") or "")

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return list(self.message.get("tool_calls") or [])


def litellm() -> ModuleType:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price map at import
    try:
        import litellm as module  # noqa: PLC0415 - heavy (about a second): only when an agent step runs
    except ImportError:
        raise EnvironmentUnfit("agent steps need litellm, which is not installed",
                               fix="pip install 'luminaguard[agent]'") from None
    module.telemetry = False
    module.suppress_debug_info = True
    return module


def complete(settings: ModelSettings, messages: Sequence[Mapping[str, Any]],
             tools: Sequence[Mapping[str, Any]]) -> ModelReply:
    module = litellm()
    extra: dict[str, Any] = {}
    if settings.api_base:
        extra["api_base"] = settings.api_base
    if settings.api_key:
        extra["api_key"] = settings.api_key
    try:
        response = module.completion(model=settings.model, messages=list(messages), tools=list(tools) or None,
                                     timeout=MODEL_TIMEOUT, num_retries=0, **extra)
    except Exception as error:
        raise ModelError(f"model {settings.model}: {type(error).__name__}: {_first_line(error)}") from None
    return _reply(module, settings, response)


def _reply(module: ModuleType, settings: ModelSettings, response: Any) -> ModelReply:
    try:
        message = response.choices[0].message
        usage = response.usage
        tokens_in, tokens_out = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
    except (AttributeError, IndexError, TypeError, ValueError) as error:
        raise ModelError(f"model {settings.model} answered with no usable message ({error})") from None
    calls = [{"id": call.id, "type": "function",
              "function": {"name": call.function.name, "arguments": call.function.arguments}}
             for call in (message.tool_calls or [])]
    assistant: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
    if calls:
        assistant["tool_calls"] = calls
    return ModelReply(assistant, tokens_in, tokens_out, price(module, settings, tokens_in, tokens_out))


def price(module: ModuleType, settings: ModelSettings, tokens_in: int, tokens_out: int) -> float | None:
    """The call's cost in USD: lg.yaml's price for the model if it gives one, else litellm's map, else None."""
    configured = settings.prices.get(settings.model)
    if configured is not None:
        return configured.cost(tokens_in, tokens_out)
    try:
        prompt, completion = module.cost_per_token(model=settings.model, prompt_tokens=tokens_in,
                                                   completion_tokens=tokens_out)
    except Exception:
        return None
    return float(prompt) + float(completion)


def known_price(settings: ModelSettings) -> bool:
    return price(litellm(), settings, 1000, 1000) is not None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:500] if text else "no message"
