from __future__ import annotations

import pytest

from llmgw.engines.openai_http import _error_fields
from llmgw.errors import (
    ContextTooLong,
    FirstByteTimeout,
    GatewayError,
    InvalidApiKey,
    InvalidRequest,
    ModelNotFound,
    NoReplica,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)


@pytest.mark.parametrize(
    ("error", "status", "type_", "code"),
    [
        (InvalidRequest("m", param="messages"), 400, "invalid_request_error", None),
        (ContextTooLong("m"), 400, "invalid_request_error", "context_length_exceeded"),
        (PayloadTooLarge("m"), 413, "invalid_request_error", "payload_too_large"),
        (ModelNotFound("m"), 404, "invalid_request_error", "model_not_found"),
        (Overloaded("m"), 429, "rate_limit_error", "overloaded"),
        (RateLimited("m", retry_after_s=3), 429, "rate_limit_error", "rate_limit_exceeded"),
        (InvalidApiKey("m"), 401, "invalid_request_error", "invalid_api_key"),
        (NoReplica("m"), 503, "server_error", "no_healthy_replica"),
        (UpstreamError("m"), 502, "server_error", "upstream_error"),
        (UpstreamUnreachable("m"), 502, "server_error", "upstream_unreachable"),
        (UpstreamDisconnected("m"), 502, "server_error", "upstream_disconnected"),
        (UpstreamFailed("m"), 502, "server_error", "upstream_error"),
        (UpstreamTimeout("m"), 504, "server_error", "upstream_timeout"),
        (FirstByteTimeout("m"), 504, "server_error", "upstream_timeout"),
        (UpstreamRejected("m", status=422, code="bad"), 422, "invalid_request_error", "bad"),
        (GatewayError("m"), 500, "server_error", None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_errors_are_openai_shaped_with_their_status(
    error: GatewayError, status: int, type_: str, code: str | None
) -> None:
    assert error.status_code == status
    assert error.body() == {"error": {"message": "m", "type": type_,
                                      "param": error.param, "code": code}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"error": {"message": "too long", "type": "BadRequestError", "param": "messages",'
         b' "code": 400}}', ("too long", "messages", None)),
        (b'{"object": "error", "message": "old vllm", "type": "BadRequestError", "code": 400}',
         ("old vllm", None, None)),
        (b'{"error": {"message": "x", "code": "model_not_found"}}', ("x", None, "model_not_found")),
        (b"Internal Server Error", ("Internal Server Error", None, None)),
        (b"", ("no message", None, None)),
    ],
    ids=["openai-shape", "legacy-vllm", "string-code", "plain-text", "empty"],
)
def test_engine_error_bodies_are_understood(raw: bytes, expected: tuple[object, ...]) -> None:
    assert _error_fields(raw) == expected


def _all_subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_all_subclasses(direct)}}


def test_the_documented_tree_lists_every_error_class() -> None:
    """llmgw/errors.py's docstring is the map clients and maintainers read: no class may be
    missing from it (three were, before this test)."""
    import llmgw.errors

    doc = llmgw.errors.__doc__ or ""
    documented = {line.replace("├──", " ").replace("└──", " ").replace("│", " ").split()[0]
                  for line in doc.splitlines() if line.strip()}
    # The embedded engine (its own server) keeps its own few subclasses beside its code.
    ours = {c.__name__ for c in _all_subclasses(GatewayError) if c.__module__ == "llmgw.errors"}
    assert ours <= documented and len(ours) >= 16


def test_errors_carry_their_own_headers() -> None:
    assert NoReplica("m").headers() == {"retry-after": "1"}
    assert InvalidRequest("m").headers() == {}
    assert RateLimited("m", retry_after_s=3, rate_headers={"x-ratelimit-limit-requests": "5"}
                       ).headers() == {"retry-after": "3", "x-ratelimit-limit-requests": "5"}
