"""OpenAI response bodies and SSE events for the simulator, and its deterministic replies.

A reply is a function of the prompt alone (seeded by its hash), so every router sees the
same histories: a chat turn resends exactly what the previous turn answered.
"""

from __future__ import annotations

import hashlib
import random
import string
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.fleet_sim.tokens import CHARS_PER_TOKEN

# 4-character words, one token each under the simulator's tokenizer.
_VOCAB = [" " + "".join(random.Random(i).choices(string.ascii_lowercase, k=CHARS_PER_TOKEN - 1))
          for i in range(512)]


def reply_pieces(prompt: str, n: int) -> list[str]:
    seed = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    return [_VOCAB[rng.randrange(len(_VOCAB))] for _ in range(n)]


@dataclass(frozen=True)
class Reply:
    """What one response is about; ``fingerprint`` names the replica (it travels in
    ``system_fingerprint``, which routers relay, so a client can tell who answered)."""

    request_id: str
    model: str
    chat: bool
    fingerprint: str
    created: int

    @classmethod
    def new(cls, request_id: str, model: str, chat: bool, fingerprint: str) -> Reply:
        return cls(request_id, model, chat, fingerprint, int(time.time()))

    def _base(self) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.request_id, "object": kind, "created": self.created,
                "model": self.model, "system_fingerprint": self.fingerprint}

    def _choice(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def event(self, text: str | None, finish: str | None = None, first: bool = False) -> bytes:
        payload = {**self._base(), "choices": [self._choice(text, finish, first)]}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def usage_event(self, usage: dict[str, Any], sim: dict[str, Any]) -> bytes:
        payload = {**self._base(), "choices": [], "usage": usage, "sim": sim}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def full(self, text: str, finish: str, usage: dict[str, Any], sim: dict[str, Any]) -> bytes:
        base = {**self._base(), "object": "chat.completion" if self.chat else "text_completion"}
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text},
             "logprobs": None, "finish_reason": finish} if self.chat
            else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        return orjson.dumps({**base, "choices": [choice], "usage": usage, "sim": sim})


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": None}})
