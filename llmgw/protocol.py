"""The OpenAI request fields the gateway itself reads, validated strictly, and the table of
endpoints the gateway relays (``ENDPOINTS``).

Everything else (tools, response_format, engine-specific extras) is kept as is and
forwarded: models allow extra fields, and the gateway relays the client's own bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Required

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
    with_config,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

# pydantic validates typing's TypedDict only from Python 3.12 on (pydantic's own dependency).
from typing_extensions import TypedDict

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


# A dict, not a model: no instance per message (half of what validating a short chat
# request cost). Its docstring would be the published schema's description.
@with_config(ConfigDict(extra="allow", strict=True, json_schema_extra=_ROLE_NEEDS))
class ChatMessage(TypedDict, total=False):
    role: Required[Role]
    content: str | list[Any] | None
    # A tool message answers the assistant's tool call of this id (required for "tool":
    # checked with the request's bounds, so that the error names this field).
    tool_call_id: str | None


class ModelRequest(_Open):
    """A request naming the model that serves it: what every relayed endpoint has."""

    model: str = Field(min_length=1)

    @property
    def streamed(self) -> bool:
        """Whether the answer is a stream of server-sent events."""
        return bool(getattr(self, "stream", False))

    @property
    def wants_usage(self) -> bool:
        """Whether the client asked for the stream's usage chunk (``stream_options``)."""
        return False


class _GenerationRequest(ModelRequest):
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

TokenIds = list[Annotated[int, Field(ge=0)]]


class EmbeddingRequest(ModelRequest):
    """OpenAI's embeddings request: one input or a batch (strings or token ids)."""

    input: (str | Annotated[list[str], Field(min_length=1)]
            | Annotated[TokenIds, Field(min_length=1)]
            | Annotated[list[Annotated[TokenIds, Field(min_length=1)]], Field(min_length=1)])
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def inputs(self) -> int:
        """How many embeddings the request asks for."""
        if isinstance(self.input, str) or isinstance(self.input[0], int):
            return 1
        return len(self.input)


class ResponsesRequest(ModelRequest):
    """OpenAI's Responses API request; items of ``input`` are the engine's to judge."""

    input: str | list[Any] | None = None
    instructions: str | None = None
    stream: bool | None = False
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = None
    # A response stored by the engine that made it: see docs/api.md on replicas.
    previous_response_id: str | None = None


def _no_default(schema: dict[str, Any]) -> None:
    """The schema of a field that is either given (not null) or absent."""
    schema.pop("default", None)


# vLLM's /tokenize takes either a prompt or chat messages, never both.
_PROMPT_OR_MESSAGES: dict[str, Any] = {
    "oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]}


class TokenizeRequest(ModelRequest):
    """vLLM's /tokenize: a completion ``prompt`` or chat ``messages`` (the chat template
    applied), to token ids."""

    model_config = ConfigDict(json_schema_extra=_PROMPT_OR_MESSAGES)
    prompt: str | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | SkipJsonSchema[None] = \
        Field(default=None, json_schema_extra=_no_default)
    add_special_tokens: bool | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        given = [name for name in ("prompt", "messages") if name in self.model_fields_set]
        if len(given) != 1 or getattr(self, given[0]) is None:
            raise PydanticCustomError("prompt_or_messages",
                                      "give either `prompt` or `messages`, not both or none")
        return self


class DetokenizeRequest(ModelRequest):
    """vLLM's /detokenize: token ids back to text."""

    tokens: TokenIds


Endpoint = Literal["chat", "completions", "embeddings", "responses", "tokenize", "detokenize"]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """How the gateway relays one endpoint. Every endpoint takes the same path through the
    gateway (auth, limits, routing, failover, relay, accounting); these are the
    differences."""

    path: str
    request: type[ModelRequest]
    # Split into prefill and decode legs on a disaggregated model; other endpoints are
    # not served there.
    disaggregates: bool = False
    # The client may ask for the stream's usage chunk (``stream_options``); the gateway
    # asks for it on every stream, for its metrics, and strips it when not asked.
    usage_option: bool = False
    # Its streams end with ``data: [DONE]`` (Responses streams end with their
    # ``response.completed`` event instead).
    done_event: bool = True
    # What marks the stream event that carries the usage (None: the endpoint does not
    # stream). Inside a JSON string the quotes would be escaped, so generated text cannot
    # fake either mark.
    usage_mark: bytes | None = None
    # Its tokens count against tokens-per-minute limits (a tokenizer route runs no model).
    counts_tokens: bool = True


ENDPOINTS: dict[Endpoint, EndpointSpec] = {
    "chat": EndpointSpec("/v1/chat/completions", ChatCompletionRequest, disaggregates=True,
                         usage_option=True, usage_mark=b'"choices":[]'),
    "completions": EndpointSpec("/v1/completions", CompletionRequest, disaggregates=True,
                                usage_option=True, usage_mark=b'"choices":[]'),
    "embeddings": EndpointSpec("/v1/embeddings", EmbeddingRequest),
    # The usage arrives in the last event (response.completed, .incomplete or .failed)
    # inside its response object; earlier events carry "usage":null.
    "responses": EndpointSpec("/v1/responses", ResponsesRequest, done_event=False,
                              usage_mark=b'"usage":{'),
    "tokenize": EndpointSpec("/tokenize", TokenizeRequest, counts_tokens=False),
    "detokenize": EndpointSpec("/detokenize", DetokenizeRequest, counts_tokens=False),
}


def normalized_usage(payload: Any) -> dict[str, Any] | None:
    """The ``usage`` of an engine's answer or stream event, in chat's terms
    (``prompt_tokens``, ``completion_tokens``, ``prompt_tokens_details``): the Responses
    API's ``input_tokens`` / ``output_tokens``, also inside a ``response.completed``
    event's ``response``, are renamed. None when the payload carries no usage."""
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if usage is None and isinstance(payload.get("response"), dict):
        usage = payload["response"].get("usage")
    if not isinstance(usage, dict):
        return None
    if "input_tokens" not in usage and "output_tokens" not in usage:
        return usage
    return {"prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "prompt_tokens_details": usage.get("input_tokens_details")}


def prompt_text(body: Mapping[str, Any]) -> str:
    """The prompt as one string, for prefix hashing: chat messages (or the Responses API's
    ``instructions`` and ``input`` items) rendered in order (role, then text content), or
    the completion prompt (or a single ``input`` string). Not the engine's chat template:
    only a stable rendering whose prefixes line up with the engine's. Only text counts:
    whatever is not a string is skipped (the engine, not routing, judges it)."""
    return "".join(_prompt_parts(body))


def prompt_length(body: Mapping[str, Any]) -> int:
    """``len(prompt_text(body))`` without joining the parts into one string (a token
    estimate needs only the length)."""
    return sum(map(len, _prompt_parts(body)))


def _prompt_parts(body: Mapping[str, Any]) -> list[str]:
    instructions = body.get("instructions")
    parts = ["<system>", instructions] if isinstance(instructions, str) else []
    messages = body.get("messages", body.get("input"))
    if isinstance(messages, list) and ("messages" in body or
                                       any(isinstance(m, dict) for m in messages)):
        for message in messages:
            if isinstance(message, dict):
                role = message.get("role")
                content = message.get("content")
                parts += ("<", role if isinstance(role, str) else "", ">",
                          # Most contents are a string: no call for those.
                          content if type(content) is str else content_text(content))
        return parts
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        parts.append(prompt)
    return parts


def content_text(content: Any) -> str:
    """A message's text: the string itself, or its content parts' string ``text`` fields
    joined; "" for anything else."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(text for part in content if isinstance(part, dict)
                   and isinstance(text := part.get("text"), str))
