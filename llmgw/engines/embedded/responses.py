"""OpenAI response bodies and stream chunks, shaped like vLLM's OpenAI server."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Kind = Literal["chat", "completion"]
DONE = b"data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event with compact JSON."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(slots=True)
class ResponseBuilder:
    """Builds the bodies of one request; `request_id` may come from `x-request-id`."""

    kind: Kind
    model: str
    request_id: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = ""

    def __post_init__(self) -> None:
        prefix = "chatcmpl-" if self.kind == "chat" else "cmpl-"
        self.id = prefix + (self.request_id or uuid.uuid4().hex)

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def role_chunk(self) -> dict[str, Any] | None:
        """The first chat chunk announces the role; completions have none."""
        if self.kind != "chat":
            return None
        return self.chunk("", None, None, delta={"role": "assistant", "content": ""})

    def chunk(
        self,
        text: str,
        finish_reason: str | None,
        stop_reason: str | int | None,
        delta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self.kind == "chat":
            if delta is None:
                delta = {"content": text} if text or finish_reason is None else {}
            choice = {"index": 0, "delta": delta, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice, obj = {"index": 0, "text": text, "logprobs": None}, "text_completion"
        choice |= {"finish_reason": finish_reason, "stop_reason": stop_reason}
        return self._envelope(obj, [choice])

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return self._envelope(obj, []) | {"usage": usage(prompt_tokens, completion_tokens)}

    def final(
        self,
        text: str,
        finish_reason: str,
        stop_reason: str | int | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> dict[str, Any]:
        """The whole non-streaming response."""
        if self.kind == "chat":
            message = {"role": "assistant", "content": text, "tool_calls": []}
            choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None}
            obj = "chat.completion"
        else:
            choice, obj = {"index": 0, "text": text, "logprobs": None}, "text_completion"
        choice |= {"finish_reason": finish_reason, "stop_reason": stop_reason}
        body = self._envelope(obj, [choice])
        body["usage"] = usage(prompt_tokens, completion_tokens)
        return body
