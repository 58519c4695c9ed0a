"""Validate OpenAI request bodies into a prompt plus `SamplingParams`.

Lenient like vLLM about what it does not use (unknown fields, `tools`,
`tool_choice`, `response_format`, penalties and `logprobs` are accepted and
ignored), strict about what it does use: a wrong type or range is an
`InvalidRequest` naming the field, never a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llmgw.engines.embedded.sampling import SamplingParams
from llmgw.errors import ContextTooLong, InvalidRequest


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
    model: str | None = _opt(body, "model", str)
    return model


def load_adapter_request(body: dict[str, Any]) -> LoadAdapterRequest:
    return LoadAdapterRequest(
        lora_name=_required_str(body, "lora_name"),
        lora_path=_required_str(body, "lora_path"),
        load_inplace=_opt(body, "load_inplace", bool, False),
    )


def unload_adapter_name(body: dict[str, Any]) -> str:
    return _required_str(body, "lora_name")


def _required_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"`{name}` is required and must be a string", param=name)
    return value


def chat_prompt_ids(body: dict[str, Any], tokenizer: Any) -> list[int]:
    """Render `messages` with the tokenizer's chat template and tokenize them."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequest("this model has no chat template; use /v1/completions")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty list", param="messages")
    rendered = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    extra = _opt(body, "chat_template_kwargs", dict) or {}
    try:
        text = tokenizer.apply_chat_template(
            rendered,
            tools=_opt(body, "tools", list),
            add_generation_prompt=_opt(body, "add_generation_prompt", bool, True),
            tokenize=False,
            **extra,
        )
    except Exception as exc:  # template errors (raise_exception, bad roles) are the caller's
        raise InvalidRequest(f"chat template failed: {exc}", param="messages") from None
    # The template already holds BOS and friends: do not add special tokens twice.
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def completion_prompt_ids(body: dict[str, Any], tokenizer: Any) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise InvalidRequest("`prompt` must be a string (or a list of one string)", param="prompt")
    return list(tokenizer(prompt).input_ids)


def generation_request(
    body: dict[str, Any], prompt_ids: list[int], max_model_len: int, prompt_param: str
) -> GenerationRequest:
    """Check lengths against the context window and build the sampling parameters."""
    n = _opt(body, "n", int, 1)
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
    stream_options = _opt(body, "stream_options", dict) or {}
    return GenerationRequest(
        prompt_ids=prompt_ids,
        params=sampling_params(body, room),
        stream=_opt(body, "stream", bool, False),
        include_usage=_opt(stream_options, "include_usage", bool, False, "stream_options."),
    )


def sampling_params(body: dict[str, Any], room: int) -> SamplingParams:
    """`room` is how many tokens fit after the prompt; it is also the default budget."""
    max_tokens, name = _opt(body, "max_completion_tokens", int), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = _opt(body, "max_tokens", int), "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise InvalidRequest(f"`{name}` must be at least 1, got {max_tokens}", param=name)
    if max_tokens is not None and max_tokens > room:
        raise ContextTooLong(
            f"`{name}` is too large: {max_tokens}; only {room} tokens fit after the prompt",
            param=name,
        )
    params = SamplingParams(
        max_tokens=max_tokens or room,
        temperature=_opt(body, "temperature", float, 1.0),
        top_p=_opt(body, "top_p", float, 1.0),
        top_k=_opt(body, "top_k", int, 0),
        seed=_opt(body, "seed", int),
        stop=_stop_strings(body.get("stop")),
        stop_token_ids=tuple(_int_list(body, "stop_token_ids")),
        ignore_eos=_opt(body, "ignore_eos", bool, False),
        min_tokens=_opt(body, "min_tokens", int, 0),
        include_stop_str_in_output=_opt(body, "include_stop_str_in_output", bool, False),
        skip_special_tokens=_opt(body, "skip_special_tokens", bool, True),
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


def _stop_strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest("`stop` must be a string or a list of strings", param="stop")
    return tuple(s for s in value if s)


def _int_list(body: dict[str, Any], name: str) -> list[int]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise InvalidRequest(f"`{name}` must be a list of integers", param=name)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt(body: dict[str, Any], name: str, kind: type, default: Any = None, prefix: str = "") -> Any:
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
