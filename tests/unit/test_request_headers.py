"""RequestHeaders.get answers as Starlette's Headers.get does, without raising inside."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from llmgw.api.request_headers import RequestHeaders

RAW = [(b"x-request-id", b"abc"), (b"x-dup", b"1"), (b"x-dup", b"2"), (b"x-latin", b"caf\xe9")]


@pytest.mark.parametrize(
    ("key", "default"),
    [("x-request-id", None), ("X-Request-ID", None), ("x-dup", None), ("x-latin", None),
     ("missing", None), ("missing", "fallback")],
    ids=["present", "any-case", "first-of-repeated", "latin-1", "missing", "default"],
)
def test_get_matches_starlette(key: str, default: str | None) -> None:
    ours = RequestHeaders(scope={"headers": RAW}).get(key, default)
    assert ours == Headers(scope={"headers": RAW}).get(key, default)
    assert ours == {"x-request-id": "abc", "x-dup": "1", "x-latin": "café"}.get(key.lower(),
                                                                              default)


@pytest.mark.parametrize("key", ["x-request-id", "X-DUP", "missing", "x-latin"])
def test_membership_and_the_other_accessors_match_starlette(key: str) -> None:
    ours, theirs = RequestHeaders(scope={"headers": RAW}), Headers(scope={"headers": RAW})
    assert (key in ours) == (key in theirs)
    assert ours.getlist(key) == theirs.getlist(key)
    assert ours.items() == theirs.items() and ours.raw == theirs.raw
