"""Scripted models for agent tests: a litellm CustomLLM (registered in litellm.custom_provider_map, so
litellm.completion runs its own code around it) and an OpenAI-compatible HTTP server on 127.0.0.1 (so
litellm's real HTTP path runs too). Both replay a list of replies and keep what they were sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lg.agent.llm import litellm

Reply = dict[str, Any]  # {"content": str, "calls": [(name, arguments dict or raw str)], "usage": (in, out)}


def say(text: str, *calls: tuple[str, Any], tokens: tuple[int, int] = (100, 20)) -> Reply:
    return {"content": text, "calls": list(calls), "usage": tokens}


def _message(reply: Reply, turn: int) -> dict[str, Any]:
    calls = [{"id": f"call_{turn}_{n}", "type": "function",
              "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
             for n, (name, args) in enumerate(reply["calls"])]
    message: dict[str, Any] = {"role": "assistant", "content": reply["content"]}
    if calls:
        message["tool_calls"] = calls
    return message


@dataclass
class Script:
    replies: Sequence[Reply] | Callable[[int, list[dict[str, Any]]], Reply]
    seen: list[list[dict[str, Any]]] = field(default_factory=list)  # the messages of each call

    def next(self, messages: list[dict[str, Any]]) -> tuple[dict[str, Any], tuple[int, int]]:
        turn = len(self.seen)
        self.seen.append([dict(m) for m in messages])
        if callable(self.replies):
            reply = self.replies(turn, messages)
        else:
            reply = self.replies[turn] if turn < len(self.replies) else say("done")
        return _message(reply, turn), reply["usage"]


@contextmanager
def scripted_provider(script: Script, name: str = "scripted") -> Iterator[str]:
    """Registers a CustomLLM named `name`; yields the model string to use (`name/model`)."""
    module = litellm()

    class Scripted(module.CustomLLM):  # type: ignore[name-defined,misc]
        def completion(self, *args: Any, **kwargs: Any) -> Any:
            message, (tokens_in, tokens_out) = script.next(list(kwargs["messages"]))
            return module.ModelResponse(
                choices=[{"index": 0, "finish_reason": "tool_calls" if "tool_calls" in message else "stop",
                          "message": message}],
                usage={"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                       "total_tokens": tokens_in + tokens_out},
                model=kwargs.get("model"))

    before = list(module.custom_provider_map)
    module.custom_provider_map = [*before, {"provider": name, "custom_handler": Scripted()}]
    module.utils.custom_llm_setup()
    try:
        yield f"{name}/model-1"
    finally:
        module.custom_provider_map = before


@contextmanager
def openai_server(script: Script, api_key: str = "sk-test-key-123456") -> Iterator[tuple[str, list[str]]]:
    """An OpenAI-compatible chat completions server on a free port of 127.0.0.1. Yields (api_base,
    Authorization headers seen)."""
    headers: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            headers.append(self.headers.get("Authorization", ""))
            message, (tokens_in, tokens_out) = script.next(body["messages"])
            answer = json.dumps({
                "id": f"chatcmpl-{len(script.seen)}", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if "tool_calls" in message else "stop"}],
                "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                          "total_tokens": tokens_in + tokens_out},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", headers
    finally:
        server.shutdown()
        server.server_close()
