"""The OpenAI request fields the gateway itself reads, validated strictly.

Everything else (tools, response_format, engine-specific extras) is kept as is and
forwarded: models allow extra fields, and the gateway relays the client's own bytes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Bounds on client-controlled work that every engine pays per generated token (stop
# matching runs inside the batched decode step, so one request's list slows its batch).
# OpenAI itself allows 4 stop sequences; these leave room for engine-specific clients.
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatMessage(_Open):
    role: str
    content: str | list[Any] | None = None


class _GenerationRequest(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    user: str | None = None

    @property
    def wants_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]


GenerationRequest = ChatCompletionRequest | CompletionRequest


def prompt_text(body: dict[str, Any]) -> str:
    """The prompt as one string, for prefix hashing: chat messages rendered in order
    (role, then text content), or the completion prompt. Not the engine's chat template:
    only a stable rendering whose prefixes line up with the engine's."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(f"<{message.get('role')}>{content or ''}")
        return "".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""
