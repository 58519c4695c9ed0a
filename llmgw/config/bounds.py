"""``server.request_bounds``: how much one request may ask for, checked by the gateway
before anything reaches an engine (400 naming the field). OpenAI's own bounds are the
defaults where it has them (n <= 128, 2048 messages, 2048 embedding inputs)."""

from __future__ import annotations

from pydantic import Field

from llmgw.config.base import _Strict


class RequestBounds(_Strict):
    max_n: int = Field(default=128, ge=1)
    # max_tokens / max_completion_tokens; null: the engine's context decides.
    max_tokens: int | None = Field(default=None, ge=1)
    # Chat messages, /tokenize messages and Responses input items.
    max_messages: int = Field(default=2048, ge=1)
    # Inputs of one /v1/embeddings request (a batch of strings or of token-id lists).
    max_inputs: int = Field(default=2048, ge=1)
