"""A request's prompt as the engine's token ids, for token-level routing (the precise
prefix scorer matches them against the KV blocks engines report).

Mirrors vLLM's OpenAI server: chat messages go through the tokenizer's chat template
(``tokenize=False``, then encoded without special tokens unless the request asks);
a completion prompt is encoded with special tokens. Work runs in a small thread pool
so a long prompt does not stall the event loop; any failure gives ``None`` (the scorer
then has no opinion), never a failed request.

What the client controls is bounded, and ``None`` is the answer beyond the bounds: a
request's own chat template (``chat_template``, or ``chat_template_kwargs.chat_template``)
is rendered only when the operator trusts request templates, as the engines themselves
(vLLM, the embedded one) refuse it with a 400 otherwise; ``tokenize`` in the kwargs is
refused by vLLM, so it gets ``None`` too; and a prompt over ``max_chars`` characters is
not tokenized at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

log = logging.getLogger("llmgw.tokens")
_TEMPLATE_FIELDS = ("add_generation_prompt", "continue_final_message")
# ~250k tokens at a typical 4 characters per token: past the context of most served
# models. Tokenizing it takes ~1 s of a worker thread on a slow core (8 MB: ~8 s).
DEFAULT_MAX_PROMPT_CHARS = 1 << 20


class _HFTokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


class PromptTokenizer:
    """A model's prompts as token ids; ``tokens`` from the event loop, ``tokens_now`` from
    any thread. ``trust_request_chat_template`` mirrors the engines' flag of that name;
    ``max_chars`` bounds the prompt (message contents, then the rendered text)."""

    def __init__(
        self,
        tokenizer: _HFTokenizer,
        workers: int = 2,
        *,
        trust_request_chat_template: bool = False,
        max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    ) -> None:
        self._tokenizer = tokenizer
        self._trusted = trust_request_chat_template
        self.max_chars = max_chars
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenize")

    @classmethod
    def load(
        cls,
        source: str,
        *,
        trust_request_chat_template: bool = False,
        max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    ) -> PromptTokenizer:
        """``source``: a model directory or hub id holding the tokenizer files."""
        from transformers import AutoTokenizer  # heavy: only when token routing is on

        return cls(
            AutoTokenizer.from_pretrained(source),
            trust_request_chat_template=trust_request_chat_template,
            max_chars=max_chars,
        )

    async def tokens(self, endpoint: Literal["chat", "completions"],
                     body: dict[str, Any]) -> Sequence[int] | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.tokens_now, endpoint, body)

    def tokens_now(self, endpoint: Literal["chat", "completions"],
                   body: dict[str, Any]) -> Sequence[int] | None:
        try:
            if endpoint == "chat":
                return self._chat(body)
            return self._completion(body)
        except Exception as exc:  # an odd template or content: route without tokens
            log.debug("cannot tokenize the prompt: %s", exc)
            return None

    def _chat(self, body: dict[str, Any]) -> list[int] | None:
        kwargs = self._template_kwargs(body)
        messages = [_text_message(m) for m in body["messages"]]
        if kwargs is None or sum(_chars(m) for m in messages) > self.max_chars:
            return None
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        if len(text) > self.max_chars:
            return None
        return self._tokenizer.encode(
            text, add_special_tokens=bool(body.get("add_special_tokens", False)))

    def _template_kwargs(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """``apply_chat_template``'s keywords; None when the engine would refuse them."""
        kwargs: dict[str, Any] = {k: body[k] for k in _TEMPLATE_FIELDS if k in body}
        kwargs.setdefault("add_generation_prompt", True)
        if body.get("tools"):
            kwargs["tools"] = body["tools"]
        extra = dict(body.get("chat_template_kwargs") or {})
        nested = extra.pop("chat_template", None)
        template = body.get("chat_template")
        template = nested if template is None else template  # vLLM: the top-level one wins
        if "tokenize" in extra or (template is not None and not self._trusted):
            return None
        if template is not None:
            extra["chat_template"] = template
        return kwargs | extra

    def _completion(self, body: dict[str, Any]) -> list[int] | None:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            if len(prompt) > self.max_chars:
                return None
            return self._tokenizer.encode(
                prompt, add_special_tokens=bool(body.get("add_special_tokens", True)))
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return prompt
        return None  # a batch of prompts has no single place to go

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _chars(message: dict[str, Any]) -> int:
    content = message.get("content")
    return len(content) if isinstance(content, str) else 0


def _text_message(message: dict[str, Any]) -> dict[str, Any]:
    """Text parts joined with newlines, as vLLM renders content lists for text models."""
    content = message.get("content")
    if isinstance(content, list):
        text = "\n".join(p.get("text", "") for p in content
                         if isinstance(p, dict) and p.get("type") == "text")
        return {**message, "content": text}
    return message
