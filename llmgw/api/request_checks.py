"""What a generation request must pass beyond its field types, before anything reaches an
engine: messages an engine would choke on or misread, and the operator's bounds
(``server.request_bounds``). Each failure is a 400 naming the field."""

from __future__ import annotations

from llmgw.config import RequestBounds
from llmgw.errors import InvalidRequest
from llmgw.protocol import ChatCompletionRequest, GenerationRequest


def check_request(req: GenerationRequest, bounds: RequestBounds) -> None:
    """Raises InvalidRequest."""
    if req.n is not None and req.n > bounds.max_n:
        raise InvalidRequest(f"n: at most {bounds.max_n}", param="n")
    if isinstance(req, ChatCompletionRequest):
        _check_messages(req, bounds)
        _check_max(req.max_completion_tokens, "max_completion_tokens", bounds)
    _check_max(req.max_tokens, "max_tokens", bounds)


def _check_max(value: int | None, field: str, bounds: RequestBounds) -> None:
    if value is not None and bounds.max_tokens is not None and value > bounds.max_tokens:
        raise InvalidRequest(f"{field}: at most {bounds.max_tokens}", param=field)


def _check_messages(req: ChatCompletionRequest, bounds: RequestBounds) -> None:
    if len(req.messages) > bounds.max_messages:
        raise InvalidRequest(f"messages: at most {bounds.max_messages} messages "
                             f"(got {len(req.messages)})", param="messages")
    for index, message in enumerate(req.messages):
        if message.role == "tool" and not message.tool_call_id:
            field = f"messages.{index}.tool_call_id"
            raise InvalidRequest(f"{field}: a tool message needs the id of the tool call "
                                 "it answers", param=field)
        if message.role == "function" and not isinstance(getattr(message, "name", None), str):
            field = f"messages.{index}.name"
            raise InvalidRequest(f"{field}: a function message needs the function's name",
                                 param=field)
