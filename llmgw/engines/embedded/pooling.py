"""The embedded engine's non-generating routes, as request bodies to tokenizer work and
back: /v1/embeddings (the prompts to pool), /tokenize and /detokenize, with vLLM's
shapes and its 400s naming the field.

Everything here runs in `PromptWorker` threads (tokenizing is work whose size the client
controls); the pooling forward itself runs on the scheduler thread (`Generator.embed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmgw.engines.embedded.prompts import PromptBuilder
from llmgw.engines.embedded.protocol import opt
from llmgw.engines.embedding_wire import EncodingFormat
from llmgw.errors import ContextTooLong, InvalidRequest


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    """The token ids of each input, and how the vectors are to be sent."""

    prompts: list[list[int]]
    encoding_format: EncodingFormat

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


class Pooling:
    """Validates embeddings, tokenize and detokenize bodies for one model. Thread-safe
    (the tokenizer is only read)."""

    def __init__(self, builder: PromptBuilder, tokenizer: Any, *, max_model_len: int,
                 vocab_size: int, hidden_size: int) -> None:
        self._builder, self._tokenizer = builder, tokenizer
        self._max_model_len, self._vocab = max_model_len, vocab_size
        self._hidden = hidden_size

    def embedding_job(self, body: dict[str, Any]) -> EmbeddingJob:
        fmt = opt(body, "encoding_format", str, "float")
        if fmt not in ("float", "base64"):
            raise InvalidRequest("`encoding_format` must be 'float' or 'base64'",
                                 param="encoding_format")
        dims = opt(body, "dimensions", int)
        if dims is not None and dims != self._hidden:
            # vLLM's answer for a model without Matryoshka representations.
            raise InvalidRequest(f"this model does not support `dimensions` other than its "
                                 f"own ({self._hidden})", param="dimensions")
        prompts = [self._checked(ids) for ids in self._inputs(body.get("input"))]
        return EmbeddingJob(prompts, "base64" if fmt == "base64" else "float")

    def _inputs(self, value: Any) -> list[list[int]]:
        """A string, a list of strings, a list of ids or a list of id lists."""
        if isinstance(value, str):
            return [self._builder.text_ids(value, "input")]
        if isinstance(value, list) and value:
            if all(isinstance(v, str) for v in value):
                return [self._builder.text_ids(v, "input") for v in value]
            if all(_is_id(v) for v in value):
                return [self._ids(value, "input")]
            if all(isinstance(v, list) for v in value):
                return [self._ids(v, f"input.{i}") for i, v in enumerate(value)]
        raise InvalidRequest("`input` must be a string, a list of strings, a list of token "
                             "ids or a list of token-id lists (none empty)", param="input")

    def _ids(self, value: list[Any], param: str) -> list[int]:
        if not all(_is_id(v) for v in value) or any(v >= self._vocab for v in value):
            raise InvalidRequest(f"`{param}` must hold token ids in [0, {self._vocab})",
                                 param=param)
        return list(value)

    def _checked(self, ids: list[int]) -> list[int]:
        if not ids:
            raise InvalidRequest("an input is empty", param="input")
        if len(ids) > self._max_model_len:
            raise ContextTooLong(
                f"This model's maximum context length is {self._max_model_len} tokens. "
                f"However, an input has {len(ids)} tokens. Please reduce the length of "
                "the input.", param="input")
        return ids

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        """vLLM's /tokenize: ``prompt`` (special tokens added unless
        ``add_special_tokens`` is false) or ``messages`` (the chat template applied)."""
        if body.get("messages") is not None:
            ids = self._builder.chat_ids(body)
        elif isinstance(body.get("prompt"), str):
            ids = self._builder.text_ids(body["prompt"], "prompt",
                                         opt(body, "add_special_tokens", bool, True))
        else:
            raise InvalidRequest("give `prompt` (a string) or `messages`", param="prompt")
        strs = self._tokenizer.convert_ids_to_tokens(ids) \
            if opt(body, "return_token_strs", bool, False) else None
        return {"count": len(ids), "max_model_len": self._max_model_len, "tokens": ids,
                "token_strs": strs}

    def detokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        tokens = body.get("tokens")
        if not isinstance(tokens, list):
            raise InvalidRequest("`tokens` must be a list of token ids", param="tokens")
        return {"prompt": self._tokenizer.decode(self._ids(tokens, "tokens"))}


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
