"""The OpenAI request fields the gateway itself reads, validated strictly.

Everything else (tools, response_format, engine-specific extras) is kept as is and
forwarded: models allow extra fields, and the gateway relays the client's own bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

# Bounds on client-controlled work that every engine pays per generated token (stop
# matching runs inside the batched decode step, so one request's list slows its batch).
# OpenAI itself allows 4 stop sequences; these leave room for engine-specific clients.
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 1024


def _bounded_stop(value: Any) -> Any:
    """``stop`` as OpenAI defines it (a string or a list of strings), within the bounds
    above. Checked here so that every engine is protected, vLLM included."""
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise PydanticCustomError("stop_type", "must be a string or a list of strings")
    if len(stops) > MAX_STOP_STRINGS:
        raise PydanticCustomError("too_many_stops", "at most {limit} stop sequences",
                                  {"limit": MAX_STOP_STRINGS})
    if any(len(s) > MAX_STOP_STRING_CHARS for s in stops):
        raise PydanticCustomError("stop_too_long",
                                  "a stop sequence has at most {limit} characters",
                                  {"limit": MAX_STOP_STRING_CHARS})
    return value


# Any, checked by one validator: errors name `stop` itself, not a member of a union. The
# JSON schema (the published OpenAPI) states what the validator accepts.
_STOP_STRING = {"type": "string", "maxLength": MAX_STOP_STRING_CHARS}
Stop = Annotated[Any, BeforeValidator(_bounded_stop), WithJsonSchema({"anyOf": [
    _STOP_STRING, {"type": "array", "items": _STOP_STRING, "maxItems": MAX_STOP_STRINGS},
    {"type": "null"}]})]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Open):
    include_usage: bool | None = None


# The roles OpenAI's chat API knows ("function" is its deprecated form of "tool").
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


# What request_checks requires of some roles, stated in the JSON schema (the published
# OpenAPI) so that a client reads it there; pydantic itself leaves it to those checks.
_ROLE_NEEDS: dict[str, Any] = {"anyOf": [
    {"properties": {"role": {"enum": ["system", "developer", "user", "assistant"]}}},
    {"properties": {"role": {"const": "tool"},
                    "tool_call_id": {"type": "string", "minLength": 1}},
     "required": ["tool_call_id"]},
    {"properties": {"role": {"const": "function"}, "name": {"type": "string"}},
     "required": ["name"]},
]}


class ChatMessage(_Open):
    model_config = ConfigDict(json_schema_extra=_ROLE_NEEDS)
    role: Role
    content: str | list[Any] | None = None
    # A tool message answers the assistant's tool call of this id (required for "tool":
    # checked with the request's bounds, so that the error names this field).
    tool_call_id: str | None = None


class _GenerationRequest(_Open):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1)
    user: str | None = None
    stop: Stop = None

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
    only a stable rendering whose prefixes line up with the engine's. Only text counts:
    whatever is not a string is skipped (the engine, not routing, judges it)."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for message in messages:
            if isinstance(message, dict):
                role = message.get("role")
                parts.append(f"<{role if isinstance(role, str) else ''}>"
                             f"{content_text(message.get('content'))}")
        return "".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def content_text(content: Any) -> str:
    """A message's text: the string itself, or its content parts' string ``text`` fields
    joined; "" for anything else."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(text for part in content if isinstance(part, dict)
                   and isinstance(text := part.get("text"), str))
