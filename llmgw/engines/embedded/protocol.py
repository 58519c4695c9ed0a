"""Validate OpenAI request bodies into `SamplingParams` (the prompt: `prompts`).

Lenient like vLLM about what it does not use (unknown fields, `tools`,
`tool_choice`, `response_format`, penalties and `logprobs` are accepted and
ignored), strict about what it does use: a wrong type or range is an
`InvalidRequest` naming the field, never a 500. What costs work on every generated
token is bounded: `stop` by `llmgw.protocol`'s limits, `stop_token_ids` by the
vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llmgw.engines.embedded.sampling import SamplingParams
from llmgw.errors import ContextTooLong, InvalidRequest
from llmgw.protocol import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A validated request, ready for the generator."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


@dataclass(frozen=True, slots=True)
class LoadAdapterRequest:
    """vLLM's `LoadLoRAAdapterRequest`; empty names are checked by the adapter manager."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False


def requested_model(body: dict[str, Any]) -> str | None:
    """The request's `model`: the base model's name, an adapter's, or None."""
    model: str | None = opt(body, "model", str)
    return model


def load_adapter_request(body: dict[str, Any]) -> LoadAdapterRequest:
    return LoadAdapterRequest(
        lora_name=_required_str(body, "lora_name"),
        lora_path=_required_str(body, "lora_path"),
        load_inplace=opt(body, "load_inplace", bool, False),
    )


def unload_adapter_name(body: dict[str, Any]) -> str:
    return _required_str(body, "lora_name")


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"`{name}` is required and must be a string", param=name)
    return value


def generation_request(
    body: dict[str, Any],
    prompt_ids: list[int],
    max_model_len: int,
    vocab_size: int,
    prompt_param: str,
) -> GenerationRequest:
    """Check lengths against the context window and build the sampling parameters;
    `vocab_size` is the width of the model's logits (the valid token ids)."""
    n = opt(body, "n", int, 1)
    if n != 1:
        raise InvalidRequest("only n=1 is supported", param="n")
    if not prompt_ids:
        raise InvalidRequest("the prompt is empty", param=prompt_param)
    room = max_model_len - len(prompt_ids)
    if room < 1:
        raise ContextTooLong(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {len(prompt_ids)} input tokens. Please reduce the length of the input.",
            param=prompt_param,
        )
    stream_options = opt(body, "stream_options", dict) or {}
    return GenerationRequest(
        prompt_ids=prompt_ids,
        params=sampling_params(body, room, vocab_size),
        stream=opt(body, "stream", bool, False),
        include_usage=opt(stream_options, "include_usage", bool, False, "stream_options."),
    )


def sampling_params(body: dict[str, Any], room: int, vocab_size: int) -> SamplingParams:
    """`room` is how many tokens fit after the prompt; it is also the default budget."""
    max_tokens, name = opt(body, "max_completion_tokens", int), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = opt(body, "max_tokens", int), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest(f"`{name}` must be at least 1, got {max_tokens}", param=name)
    if max_tokens is not None and max_tokens > room:
        raise ContextTooLong(
            f"`{name}` is too large: {max_tokens}; only {room} tokens fit after the prompt",
            param=name,
        )
    params = SamplingParams(
        max_tokens=max_tokens or room,
        temperature=opt(body, "temperature", float, 1.0),
        top_p=opt(body, "top_p", float, 1.0),
        top_k=opt(body, "top_k", int, 0),
        seed=opt(body, "seed", int),
        stop=_stop_strings(body.get("stop")),
        stop_token_ids=_token_ids(body, "stop_token_ids", vocab_size),
        ignore_eos=opt(body, "ignore_eos", bool, False),
        min_tokens=opt(body, "min_tokens", int, 0),
        include_stop_str_in_output=opt(body, "include_stop_str_in_output", bool, False),
        skip_special_tokens=opt(body, "skip_special_tokens", bool, True),
    )
    _check_ranges(params)
    return params


def _check_ranges(p: SamplingParams) -> None:
    if p.temperature < 0:
        raise InvalidRequest("`temperature` must be >= 0", param="temperature")
    if not 0 < p.top_p <= 1:
        raise InvalidRequest("`top_p` must be in (0, 1]", param="top_p")
    if p.top_k < -1:
        raise InvalidRequest("`top_k` must be -1 or 0 (disabled) or >= 1", param="top_k")
    if not 0 <= p.min_tokens <= p.max_tokens:
        raise InvalidRequest("`min_tokens` must be in [0, max_tokens]", param="min_tokens")
    if p.seed is not None and not -(2**63) <= p.seed < 2**64:  # torch.Generator's range
        raise InvalidRequest("`seed` is out of range", param="seed")


def _stop_strings(value: Any) -> tuple[str, ...]:
    """Bounded: every generated token of the whole batch waits for stop matching."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest("`stop` must be a string or a list of strings", param="stop")
    if len(value) > MAX_STOP_STRINGS:
        raise InvalidRequest(
            f"`stop` may hold at most {MAX_STOP_STRINGS} strings, got {len(value)}", param="stop"
        )
    if any(len(s) > MAX_STOP_STRING_CHARS for s in value):
        raise InvalidRequest(
            f"each `stop` string may have at most {MAX_STOP_STRING_CHARS} characters",
            param="stop",
        )
    return tuple(s for s in value if s)


def _token_ids(body: dict[str, Any], name: str, vocab_size: int) -> frozenset[int]:
    """Distinct ids within the vocabulary (an id beyond it cannot be sampled, and
    banning it below `min_tokens` would fail the decode step)."""
    value = body.get(name) or []
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise InvalidRequest(f"`{name}` must be a list of integers", param=name)
    if any(not 0 <= v < vocab_size for v in value):
        raise InvalidRequest(f"`{name}` must hold token ids in [0, {vocab_size})", param=name)
    return frozenset(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def opt(body: dict[str, Any], name: str, kind: type, default: Any = None, prefix: str = "") -> Any:
    """`body[name]` checked against `kind`; `default` when missing or null."""
    value = body.get(name)
    if value is None:
        return default
    if kind is int:
        ok = _is_int(value)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise InvalidRequest(
            f"`{prefix}{name}` must be of type {kind.__name__}", param=prefix + name
        )
    return value
