"""The published OpenAPI document: valid OpenAPI 3.1 whatever the bounds, and the bounds
it states are the instance's."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from llmgw.api.openapi import openapi_schema
from llmgw.config import RequestBounds


@pytest.mark.parametrize("bounds", [RequestBounds(), RequestBounds(max_n=2, max_tokens=64,
                                                                      max_messages=8)],
                         ids=["defaults", "bounded"])
def test_document_is_valid_openapi(bounds: RequestBounds) -> None:
    validate(openapi_schema(bounds))


def _limits(bounds: RequestBounds) -> dict[str, object]:
    schemas = openapi_schema(bounds)["components"]["schemas"]
    chat, completion = (schemas[n]["properties"] for n in ("ChatCompletionRequest",
                                                          "CompletionRequest"))
    return {"chat.n": chat["n"]["anyOf"][0].get("maximum"),
            "chat.max_tokens": chat["max_tokens"]["anyOf"][0].get("maximum"),
            "chat.max_completion_tokens":
                chat["max_completion_tokens"]["anyOf"][0].get("maximum"),
            "chat.messages": chat["messages"]["maxItems"],
            "completion.n": completion["n"]["anyOf"][0].get("maximum"),
            "completion.max_tokens": completion["max_tokens"]["anyOf"][0].get("maximum")}


@pytest.mark.parametrize(("bounds", "expected"), [
    (RequestBounds(), {"chat.n": 128, "chat.max_tokens": None,
                       "chat.max_completion_tokens": None, "chat.messages": 2048,
                       "completion.n": 128, "completion.max_tokens": None}),
    (RequestBounds(max_n=2, max_tokens=64, max_messages=8),
     {"chat.n": 2, "chat.max_tokens": 64, "chat.max_completion_tokens": 64,
      "chat.messages": 8, "completion.n": 2, "completion.max_tokens": 64}),
], ids=["defaults", "bounded"])
def test_request_bodies_state_the_bounds(bounds: RequestBounds,
                                         expected: dict[str, object]) -> None:
    assert _limits(bounds) == expected


def test_bounds_do_not_leak_between_documents() -> None:
    """pydantic caches model schemas: one instance's bounds must not show in another's."""
    openapi_schema(RequestBounds(max_n=2))
    assert _limits(RequestBounds())["chat.n"] == 128
