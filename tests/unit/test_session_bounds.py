"""Routing state that clients fill is bounded in bytes, not only in entries: session keys
are cached as fixed-size digests, however long the header or field that names the
session, and the per-request tables hold a bounded amount per entry."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from llmgw.protocol import prompt_length, prompt_text
from llmgw.routing.affinity import PENDING_LIMIT
from llmgw.routing.prefix_cache import PENDING_HASHES, PendingHashes, PrefixCacheScorer
from llmgw.routing.session import SessionScorer, session_key
from llmgw.types import ReplicaView, RequestContext

REPLICAS = [ReplicaView(id=f"r{i}", model="m") for i in range(4)]
BIG = 100_000  # characters of one client-chosen session id or prompt


@contextmanager
def retained() -> Iterator[Callable[[], int]]:
    """Bytes allocated inside the block and still alive at its end."""
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()


def request(session_id: str | None = None, prompt: str = "") -> RequestContext:
    # A gateway-made request id: fixed size, as the API layer makes them.
    return RequestContext(request_id=os.urandom(12).hex(), model="m", endpoint="chat",
                          stream=False, session_id=session_id, prompt=prompt)


@pytest.mark.parametrize(
    ("headers", "body"),
    [({"x-session-id": "s" * 1_000_000}, {}),
     ({}, {"prompt_cache_key": "k" * 1_000_000}),
     ({}, {"user": "u" * 1_000_000})],
    ids=["header", "prompt-cache-key", "user"],
)
def test_session_keys_are_fixed_size_and_still_tell_sessions_apart(
        headers: dict[str, str], body: dict[str, object]) -> None:
    key = session_key(headers, body)
    other = session_key({k: v + "!" for k, v in headers.items()},
                        {k: v + "!" for k, v in body.items()})  # type: ignore[operator]
    assert key is not None and other is not None
    assert len(key) == len(other) == len(session_key({"x-session-id": "a"}, {}) or "")
    assert key == session_key(headers, body) and key != other


def test_the_session_cache_holds_digests_not_the_clients_keys() -> None:
    scorer = SessionScorer()
    with retained() as grown:
        for i in range(300):  # 30 MB of session ids if they were kept whole
            sid = session_key({"x-session-id": f"{i}:" + "s" * BIG}, {})
            assert len(scorer.score(request(session_id=sid), REPLICAS)) == 1
        assert grown() < 300 * 1024


def test_unrouted_requests_leave_a_bounded_amount_in_the_prefix_scorer() -> None:
    # Scored, never routed (the engine refused, the client left): each leaves its block
    # hashes and prediction behind. Prompts as long as the scorer reads (256 blocks):
    # PENDING_LIMIT of them would keep ~40 MB; the hashes held are bounded instead.
    scorer = PrefixCacheScorer()
    prompt = "p" * BIG
    with retained() as grown:
        for i in range(PENDING_LIMIT * 2):
            scorer.score(request(prompt=f"{i}:{prompt}"), REPLICAS)
        held = grown()
    assert len(scorer._pending) < PENDING_LIMIT
    # ~40 bytes a hash; ~400 bytes a ledger entry (4 replicas) and a pending entry's key.
    assert held < PENDING_HASHES * 48 + PENDING_LIMIT * 1024


def test_pending_hashes_evict_the_oldest_and_keep_count() -> None:
    pending = PendingHashes(max_entries=3, max_hashes=10)
    for rid, size in (("a", 4), ("b", 4), ("c", 2)):
        pending.put(rid, list(range(size)))
    assert [pending.get(r) is not None for r in "abc"] == [True, True, True]
    pending.put("d", [7, 7, 7])  # 13 hashes: "a" goes
    assert pending.get("a") is None and pending.pop("b") == [0, 1, 2, 3]
    pending.put("e", list(range(11)))  # larger than the bound alone: nothing is kept
    assert len(pending) == 0 and pending.pop("e") is None
    pending.put("f", [1])
    assert len(pending) == 1 and pending.get("f") == [1]


@pytest.mark.parametrize(
    ("body", "text"),
    [({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": None},
        {"type": "text", "text": 5}, {"type": "text"}, "bare", {"text": ["x"]},
        {"type": "text", "text": "b"}]}]}, "<user>ab"),
     ({"messages": [{"role": 5, "content": {"nested": "dict"}}, "not a message",
                    {"role": "user", "content": "ok"}]}, "<>" + "<user>ok"),
     ({"prompt": ["a", "b"]}, ""),
     ({"messages": "not a list", "prompt": "p"}, "p")],
    ids=["text-parts", "odd-roles-and-contents", "prompt-list", "messages-not-a-list"],
)
def test_prompt_text_keeps_only_text(body: dict[str, object], text: str) -> None:
    assert prompt_text(body) == text
    assert prompt_length(body) == len(text)  # the token estimate's count, never joined
