"""Input hardening: messages an engine would misread and the operator's bounds are 400s
naming the field, before anything reaches an engine."""

from __future__ import annotations

from typing import Any

import pytest

from llmgw.api.generation import validate
from llmgw.api.request_checks import check_request
from llmgw.config import RequestBounds
from llmgw.errors import InvalidRequest

BOUNDS = RequestBounds(max_n=4, max_tokens=100, max_messages=3, max_inputs=4)
USER = {"role": "user", "content": "hi"}


def refusal(body: dict[str, Any], endpoint: str = "chat") -> tuple[str | None, str] | None:
    try:
        check_request(validate({"model": "m", **body}, endpoint), BOUNDS)  # type: ignore[arg-type]
    except InvalidRequest as exc:
        return exc.param, exc.message
    return None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [USER]}, None),
        ({"messages": []}, ("messages", "messages: List should have at least 1 item after "
                                        "validation, not 0")),
        ({"messages": [{"role": "wizard", "content": "x"}]},
         ("messages.0.role", "messages.0.role: Input should be 'system', 'developer', "
                             "'user', 'assistant', 'tool' or 'function'")),
        ({"messages": [USER, {"role": "tool", "content": "42"}]},
         ("messages.1.tool_call_id", "messages.1.tool_call_id: a tool message needs the id "
                                     "of the tool call it answers")),
        ({"messages": [USER, {"role": "tool", "content": "42", "tool_call_id": "c1"}]}, None),
        ({"messages": [{"role": "function", "content": "42"}]},
         ("messages.0.name", "messages.0.name: a function message needs the function's name")),
        ({"messages": [{"role": "function", "name": "f", "content": "42"}]}, None),
        ({"messages": ["hi"]}, ("messages.0", "messages.0: Input should be a valid dictionary")),
        ({"messages": [{"content": "hi"}]}, ("messages.0.role", "messages.0.role: Field required")),
        ({"messages": [{"role": "user", "content": 7}]},
         ("messages.0.content", "messages.0.content: Input should be a valid string")),
        ({"messages": [USER, {"role": "tool", "content": "42", "tool_call_id": 3}]},
         ("messages.1.tool_call_id", "messages.1.tool_call_id: Input should be a valid string")),
        ({"messages": [USER] * 4}, ("messages", "messages: at most 3 messages (got 4)")),
        ({"messages": [USER], "n": 5}, ("n", "n: at most 4")),
        ({"messages": [USER], "max_tokens": 101}, ("max_tokens", "max_tokens: at most 100")),
        ({"messages": [USER], "max_completion_tokens": 101},
         ("max_completion_tokens", "max_completion_tokens: at most 100")),
        ({"messages": [USER], "n": 4, "max_tokens": 100}, None),
        # Valid shapes that must pass: what SDKs and agent frameworks really send.
        ({"messages": [{"role": "developer", "content": "be brief"},
                       {"role": "user", "name": "bob",
                        "content": [{"type": "text", "text": "hi"},
                                    {"type": "image_url",
                                     "image_url": {"url": "data:image/png;base64,AA=="}}]}]},
         None),
        ({"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                       {"role": "tool", "tool_call_id": "c1",
                        "content": [{"type": "text", "text": "4"}]}]}, None),
        ({"messages": [{"role": "system", "content": [{"type": "text", "text": "x"}]},
                       {"role": "assistant", "content": "no", "refusal": None,
                        "name": "helper"}]}, None),
    ],
    ids=["ok", "empty", "unknown-role", "tool-without-id", "tool-with-id", "function-no-name",
         "function-named", "not-an-object", "no-role", "content-not-text", "tool-id-not-text",
         "too-many-messages", "n", "max-tokens", "max-completion-tokens", "at-the-bounds",
         "developer-and-content-parts", "tool-calls-with-null-content", "system-parts-named"])
def test_chat_requests(body: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert refusal(body) == expected


def test_completions_are_bounded_too() -> None:
    assert refusal({"prompt": "x", "n": 9}, "completions") == ("n", "n: at most 4")
    assert refusal({"prompt": "x", "max_tokens": 500}, "completions") == \
        ("max_tokens", "max_tokens: at most 100")
    assert refusal({"prompt": "x"}, "completions") is None


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        ("embeddings", {"input": ["a"] * 5}, ("input", "input: at most 4 inputs (got 5)")),
        ("embeddings", {"input": [[1]] * 5}, ("input", "input: at most 4 inputs (got 5)")),
        ("embeddings", {"input": list(range(50))}, None),  # one input of 50 ids
        ("embeddings", {"input": ["a"] * 4, "dimensions": 3, "encoding_format": "base64"},
         None),
        ("embeddings", {"input": "a", "encoding_format": "hex"},
         ("encoding_format", "encoding_format: Input should be 'float' or 'base64'")),
        ("responses", {"input": "x", "max_output_tokens": 101},
         ("max_output_tokens", "max_output_tokens: at most 100")),
        ("responses", {"input": [USER] * 4}, ("input", "input: at most 3 items (got 4)")),
        ("responses", {"input": [USER] * 3, "max_output_tokens": 100, "tools": []}, None),
        ("tokenize", {"messages": [USER] * 4},
         ("messages", "messages: at most 3 messages (got 4)")),
        ("tokenize", {"messages": [USER, {"role": "tool", "content": "4"}]},
         ("messages.1.tool_call_id", "messages.1.tool_call_id: a tool message needs the id "
                                     "of the tool call it answers")),
        ("tokenize", {"prompt": "x", "add_special_tokens": False}, None),
        ("detokenize", {"tokens": [1, 2]}, None),
    ],
    ids=["embedding-batch", "embedding-id-batch", "embedding-ids", "embedding-at-bound",
         "embedding-format", "responses-max-output", "responses-items", "responses-at-bounds",
         "tokenize-messages", "tokenize-tool-message", "tokenize-prompt", "detokenize"])
def test_other_endpoints_are_bounded(endpoint: str, body: dict[str, Any],
                                     expected: tuple[str, str] | None) -> None:
    assert refusal(body, endpoint) == expected


def test_default_bounds_are_openais() -> None:
    assert RequestBounds() == RequestBounds(max_n=128, max_tokens=None, max_messages=2048,
                                            max_inputs=2048)


def test_a_message_keeps_every_field_it_came_with() -> None:
    """Messages are validated as dicts: what the gateway does not read (names, tool calls,
    engine extras) stays as the client sent it."""
    message = {"role": "assistant", "content": None, "name": "helper", "vendor": {"x": [1]},
               "tool_calls": [{"id": "c1", "type": "function"}]}
    request = validate({"model": "m", "messages": [message]}, "chat")
    assert request.messages == [message]  # type: ignore[attr-defined]
