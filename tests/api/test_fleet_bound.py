"""The hit-rate bound of bench/fleet_sim (bound.py, issue 15 point 2) on traces small
enough to count by hand: 4-character tokens, one token per block."""

from __future__ import annotations

import math

import pytest

from bench.fleet_sim.bound import Bound, Sent, Trace, bound_hits, hit_bound

A, B, C = "aaaa", "bbbb", "cccc"


def test_a_block_hits_only_after_an_earlier_request_produced_it() -> None:
    # Only full blocks within the first n-1 tokens are looked up: A and AB of ABC.
    trace = [Sent(A + B + C, "x"), Sent(A + B + C, "x")]
    assert hit_bound(trace, 1, replicas=2, load_limit=math.inf) == Bound(2 / 6, 2 / 6)


def test_a_reply_produces_the_blocks_the_next_turn_looks_up() -> None:
    trace = [Sent(A, B), Sent(A + B + C, "x")]
    assert bound_hits(Trace(trace, 1), replicas=2, load_limit=math.inf) == 2


@pytest.mark.parametrize(
    ("producer_first", "limit", "hits"),
    [
        (False, math.inf, 3),
        (False, 2.0, 3),
        (False, 1.0, 2),
        (True, math.inf, 3),
        (True, 1.0, 2),
    ],
    ids=[
        "no-limit",
        "one-replica-may-take-all",
        "even-split",
        "produced-no-limit",
        "produced-even-split",
    ],
)
def test_a_load_limit_forces_a_miss_per_replica_a_block_must_spread_over(
    producer_first: bool, limit: float, hits: int
) -> None:
    """Requests for block A over 2 replicas. Four lookups of A: the first misses (nothing
    produced A before); with each replica at most the mean (1.0 x 2 requests) they span
    both replicas, whose first lookups both miss. With a first request that produces A
    without looking it up (its prompt is A alone), three lookups: that request can warm
    one replica, so again only one forced miss beyond it."""
    trace = [Sent(A, "x")] + [Sent(A + B, "x")] * 3 if producer_first else [Sent(A + B, "x")] * 4
    assert bound_hits(Trace(trace, 1), replicas=2, load_limit=limit) == hits
