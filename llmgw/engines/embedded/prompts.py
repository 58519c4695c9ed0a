"""A request body as a `GenerationRequest`: chat template, length bound, tokenizer.

Everything here is work whose size the client controls, so it runs in `PromptWorker`'s
threads, never on the engine's event loop (an 8 MB prompt tokenizes for seconds; a
template can loop for ever). The tokenizer releases the GIL while it encodes and Jinja
gives it up every switch interval, so /health keeps answering meanwhile.

Bounds, checked before the expensive step they guard:

* Request-supplied chat templates (top-level `chat_template`, or
  `chat_template_kwargs.chat_template`) are refused unless the operator passed
  `--trust-request-chat-template`, with vLLM's message and check
  (`OnlineRenderer.validate_chat_template`); `tokenize` in `chat_template_kwargs` is
  refused as vLLM refuses it. When trusted, the top-level template wins, as in vLLM.
* A prompt with more characters than `max_model_len * chars_per_token` can never fit
  the context window: it is refused before tokenizing (see `prompt_char_bound`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from llmgw.engines.embedded.protocol import GenerationRequest, generation_request, opt
from llmgw.errors import ContextTooLong, InvalidRequest

T = TypeVar("T")
# Normalizers may compose characters before the tokenizer splits them (NFC/NFKC turn
# at most 4 code points, e.g. a Greek letter with three diacritics, into one).
_NORMALIZER_SLACK = 4
UNTRUSTED_TEMPLATE = (
    "Chat template is passed with request, but --trust-request-chat-template is not set. "
    "Refused request with untrusted chat template."
)


def prompt_char_bound(tokenizer: Any, max_model_len: int) -> int:
    """Most characters a prompt of `max_model_len` tokens can have.

    Safe because a token never covers more characters than its vocabulary string has:
    byte-level BPE writes one symbol per byte (and a character is at least one byte),
    SentencePiece writes the piece itself or `<0xNN>` for a single byte, and added
    tokens match their own text. So `max_model_len` tokens hold at most
    `max_model_len * longest string` characters, times the normalizer slack above.
    (A tokenizer that deletes characters, or fuses a run of unknown ones into one
    `<unk>`, could fit more; generative models' tokenizers do neither.)
    """
    longest = max((len(piece) for piece in tokenizer.get_vocab()), default=1)
    return max_model_len * longest * _NORMALIZER_SLACK


class PromptBuilder:
    """Validates bodies and tokenizes prompts for one model. Pure and thread-safe
    (the tokenizer is only read); call it in `PromptWorker`, not on the event loop."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_model_len: int,
        vocab_size: int,
        trust_request_chat_template: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._max_model_len = max_model_len
        self._vocab_size = vocab_size
        self._trusted = trust_request_chat_template
        self.max_chars = prompt_char_bound(tokenizer, max_model_len)

    def request(self, body: dict[str, Any], kind: str) -> GenerationRequest:
        """`kind`: "chat" or "completion"."""
        if kind == "chat":
            prompt_ids, param = self.chat_ids(body), "messages"
        else:
            prompt_ids, param = self.completion_ids(body), "prompt"
        return generation_request(body, prompt_ids, self._max_model_len, self._vocab_size, param)

    def chat_ids(self, body: dict[str, Any]) -> list[int]:
        """Render `messages` with the chat template, then tokenize them."""
        template, extra = self._template(body)
        if template is None and getattr(self._tokenizer, "chat_template", None) is None:
            raise InvalidRequest("this model has no chat template; use /v1/completions")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("`messages` must be a non-empty list", param="messages")
        rendered = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
        if template is not None:
            extra["chat_template"] = template
        try:
            text = self._tokenizer.apply_chat_template(
                rendered,
                tools=opt(body, "tools", list),
                add_generation_prompt=opt(body, "add_generation_prompt", bool, True),
                tokenize=False,
                **extra,
            )
        except Exception as exc:  # template errors (raise_exception, bad roles) are the caller's
            raise InvalidRequest(f"chat template failed: {exc}", param="messages") from None
        if not isinstance(text, str):
            raise InvalidRequest("the chat template did not render text", param="messages")
        self._check_chars(text, "messages")
        # The template already holds BOS and friends: do not add special tokens twice.
        return list(self._tokenizer(text, add_special_tokens=False).input_ids)

    def completion_ids(self, body: dict[str, Any]) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequest(
                "`prompt` must be a string (or a list of one string)", param="prompt"
            )
        return self.text_ids(prompt, "prompt")

    def text_ids(self, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
        """A plain text's token ids; refused (ContextTooLong) when it cannot fit."""
        self._check_chars(text, param)
        return list(self._tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def _template(self, body: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        """The request's own template (None: the model's) and the other template kwargs."""
        extra = dict(opt(body, "chat_template_kwargs", dict) or {})
        if "tokenize" in extra:  # vLLM: "Found unexpected chat template kwargs"
            raise InvalidRequest(
                "`chat_template_kwargs` may not set `tokenize`", param="chat_template_kwargs"
            )
        nested = extra.pop("chat_template", None)
        if not self._trusted and (body.get("chat_template") is not None or nested is not None):
            param = "chat_template" if nested is None else "chat_template_kwargs"
            raise InvalidRequest(UNTRUSTED_TEMPLATE, param=param)
        template: str | None = opt(body, "chat_template", str)
        if template is None and nested is not None:
            if not isinstance(nested, str):
                raise InvalidRequest(
                    "`chat_template_kwargs.chat_template` must be a string",
                    param="chat_template_kwargs.chat_template",
                )
            template = nested
        return template, extra

    def _check_chars(self, text: str, param: str) -> None:
        if len(text) > self.max_chars:
            limit = self._max_model_len
            raise ContextTooLong(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"request has more than {limit} input tokens ({len(text)} characters; a "
                f"prompt that fits has at most {self.max_chars}). Please reduce the length "
                "of the input.",
                param=param,
            )


class PromptWorker:
    """The threads that run `PromptBuilder`; used from the event loop only.

    `preparing` counts requests whose prompt is being built now (a gauge in /metrics).
    Two threads: a long trusted template or a long prompt delays the next one, not all.
    """

    def __init__(self, threads: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="llmgw-prompt")
        self.preparing = 0

    async def run(
        self, builder: PromptBuilder, body: dict[str, Any], kind: str
    ) -> GenerationRequest:
        return await self.call(builder.request, body, kind)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Any other tokenizer work of a request (embeddings' inputs, /tokenize)."""
        self.preparing += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, fn, *args)
        finally:
            self.preparing -= 1

    def close(self) -> None:
        """Drop queued work; a template already rendering finishes on its own."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _message(message: Any, where: str) -> dict[str, Any]:
    """One chat message with its content flattened to a string for the template."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise InvalidRequest(f"`{where}` must be an object with a string `role`", param=where)
    content = message.get("content")
    if isinstance(content, list):
        content = "\n".join(_text_part(part, f"{where}.content") for part in content)
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest(f"`{where}.content` must be a string or a list", param=where)
    return {**message, "content": content or ""}


def _text_part(part: Any, where: str) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return str(part["text"])
    raise InvalidRequest(f"`{where}`: only text content parts are supported", param=where)
