"""What a request must pass beyond its field types, before anything reaches an engine:
messages an engine would choke on or misread, and the operator's bounds
(``server.request_bounds``). Each failure is a 400 naming the field."""

from __future__ import annotations

from llmgw.config import RequestBounds
from llmgw.errors import InvalidRequest
from llmgw.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ModelRequest,
    ResponsesRequest,
    TokenizeRequest,
)

# A tuple, not ``A | B``: a union in ``isinstance`` is built anew on every call.
_GENERATION = (ChatCompletionRequest, CompletionRequest)


def check_request(req: ModelRequest, bounds: RequestBounds) -> None:
    """Raises InvalidRequest."""
    if isinstance(req, _GENERATION):
        if req.n is not None and req.n > bounds.max_n:
            raise InvalidRequest(f"n: at most {bounds.max_n}", param="n")
        _check_max(req.max_tokens, "max_tokens", bounds)
    if isinstance(req, ChatCompletionRequest):
        _check_messages(req.messages, "messages", bounds)
        _check_max(req.max_completion_tokens, "max_completion_tokens", bounds)
    elif isinstance(req, TokenizeRequest) and req.messages is not None:
        _check_messages(req.messages, "messages", bounds)
    elif isinstance(req, ResponsesRequest):
        _check_max(req.max_output_tokens, "max_output_tokens", bounds)
        if isinstance(req.input, list) and len(req.input) > bounds.max_messages:
            raise InvalidRequest(f"input: at most {bounds.max_messages} items "
                                 f"(got {len(req.input)})", param="input")
    elif isinstance(req, EmbeddingRequest) and req.inputs() > bounds.max_inputs:
        raise InvalidRequest(f"input: at most {bounds.max_inputs} inputs "
                             f"(got {req.inputs()})", param="input")


def _check_max(value: int | None, field: str, bounds: RequestBounds) -> None:
    if value is not None and bounds.max_tokens is not None and value > bounds.max_tokens:
        raise InvalidRequest(f"{field}: at most {bounds.max_tokens}", param=field)


def _check_messages(messages: list[ChatMessage], name: str, bounds: RequestBounds) -> None:
    if len(messages) > bounds.max_messages:
        raise InvalidRequest(f"{name}: at most {bounds.max_messages} messages "
                             f"(got {len(messages)})", param=name)
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "tool" and not message.get("tool_call_id"):
            field = f"{name}.{index}.tool_call_id"
            raise InvalidRequest(f"{field}: a tool message needs the id of the tool call "
                                 "it answers", param=field)
        if role == "function" and not isinstance(message.get("name"), str):
            field = f"{name}.{index}.name"
            raise InvalidRequest(f"{field}: a function message needs the function's name",
                                 param=field)
