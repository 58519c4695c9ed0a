"""The simulator's tokenizer stand-in, chat rendering and KV block hashes.

Tokens are fixed 4-character pieces of the rendered prompt (the last piece may be
shorter). Real BPE averages about 4 characters per English token, and fixed pieces keep
one property the cache model relies on: a string that extends another tokenizes to an
extension of its tokens, so a resent chat history shares every full block with the
previous turn. Chat messages render in order as ``<|role|>content<|end|>``, then
``<|assistant|>``, so a history plus the reply it got is a string prefix of the next turn.
"""

from __future__ import annotations

import hashlib
from typing import Any

CHARS_PER_TOKEN = 4


def render_chat(messages: list[Any]) -> str:
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: only the text counts
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"<|{message.get('role')}|>{content or ''}<|end|>")
    parts.append("<|assistant|>")
    return "".join(parts)


def render_body(body: dict[str, Any]) -> str:
    """The prompt text of a chat or completion request body; "" when it has none."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return render_chat(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, list):  # a batch of prompts is simulated as their concatenation
        return "".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def token_count(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def block_hashes(text: str, block_tokens: int, max_tokens: int | None = None,
                 adapter: str | None = None) -> list[bytes]:
    """Chained hashes of the full blocks of ``text``'s first ``max_tokens`` tokens: each is
    hash(parent hash + block), as vLLM's prefix cache keys blocks, so a block matches only
    when everything before it matches too. Under a LoRA ``adapter`` the chain starts from
    the adapter's own root, so no block of it matches the base model's or another
    adapter's (vLLM puts the LoRA id in every block's extra keys)."""
    block_chars = block_tokens * CHARS_PER_TOKEN
    usable = len(text) if max_tokens is None else min(len(text), max_tokens * CHARS_PER_TOKEN)
    hashes: list[bytes] = []
    parent = b"" if adapter is None else hashlib.blake2b(
        b"lora:" + adapter.encode(), digest_size=8).digest()
    for start in range(0, usable - block_chars + 1, block_chars):
        chunk = text[start:start + block_chars].encode()
        parent = hashlib.blake2b(parent + chunk, digest_size=8).digest()
        hashes.append(parent)
    return hashes
