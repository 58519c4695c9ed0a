"""A request's token count before any engine has seen it, for token limits: about four
characters a token (OpenAI's rule of thumb), or the ids themselves for a prompt given as
tokens. Corrected by the engine's ``usage`` once the request ends, so the estimate only
decides whether a request may start, never what it is charged in the end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmgw.protocol import prompt_length

CHARS_PER_TOKEN = 4


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens, at least 1: a completion's prompt, a chat's messages, an embedding
    request's inputs or a Responses request's input."""
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list) and not any(isinstance(p, dict) for p in prompt):
        if all(isinstance(p, int) for p in prompt):
            return max(1, len(prompt))
        return max(1, sum(len(p) if isinstance(p, list) else
                          len(p) // CHARS_PER_TOKEN if isinstance(p, str) else 0
                          for p in prompt))
    return max(1, prompt_length(body) // CHARS_PER_TOKEN)


def used_tokens(usage: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from an engine's ``usage`` (in chat's terms:
    ``llmgw.protocol.normalized_usage``); None where it says nothing."""
    if not usage:
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return (prompt if isinstance(prompt, int) else None,
            completion if isinstance(completion, int) else None)
