from __future__ import annotations

import random
from collections import Counter

import pytest

from llmgw.routing.least_load import LeastLoadScorer
from llmgw.routing.registry import make_policy, policy_names
from llmgw.routing.round_robin import RoundRobinPolicy
from llmgw.types import ReplicaView, RequestContext

CTX = RequestContext(request_id="r", model="m", endpoint="chat", stream=False)


def views(*loads: int, queue: tuple[int | None, ...] | None = None) -> list[ReplicaView]:
    queue = queue or (None,) * len(loads)
    return [ReplicaView(id=f"r{i}", model="m", in_flight=load, queue_depth=q)
            for i, (load, q) in enumerate(zip(loads, queue, strict=True))]


@pytest.mark.parametrize(
    ("replicas", "expected"),
    [
        (views(0, 2, 4), {"r0": 1.0, "r1": 0.5, "r2": 0.0}),
        (views(3, 3), {"r0": 1.0, "r1": 1.0}),
        (views(1, 0, queue=(0, 5)), {"r0": 1.0, "r1": 0.0}),
        (views(), {}),
    ],
    ids=["spread", "equal", "engine-queue-counts", "empty"],
)
def test_least_load_scores(replicas: list[ReplicaView], expected: dict[str, float]) -> None:
    assert LeastLoadScorer().score(CTX, replicas) == expected


def test_least_load_ranks_least_loaded_first() -> None:
    ranked = make_policy("least-load", random.Random(1)).rank(CTX, views(5, 1, 3))
    assert [r.id for r in ranked] == ["r1", "r2", "r0"]


def test_least_load_breaks_ties_with_the_seeded_rng_not_always_the_first() -> None:
    policy = make_policy("least-load", random.Random(7))
    firsts = Counter(policy.rank(CTX, views(0, 0, 0, 0))[0].id for _ in range(400))
    assert set(firsts) == {"r0", "r1", "r2", "r3"}
    assert max(firsts.values()) < 160  # no replica takes most ties
    again = make_policy("least-load", random.Random(7))
    replay = Counter(again.rank(CTX, views(0, 0, 0, 0))[0].id for _ in range(400))
    assert replay == firsts  # deterministic for a seed


def test_round_robin_cycles_through_every_replica() -> None:
    policy = RoundRobinPolicy(random.Random(3))
    replicas = views(9, 0, 0)
    firsts = [policy.rank(CTX, replicas)[0].id for _ in range(6)]
    assert sorted(firsts) == ["r0", "r0", "r1", "r1", "r2", "r2"]
    assert firsts[:3] == firsts[3:]
    assert policy.rank(CTX, []) == []


def test_ranking_lists_every_replica_once_for_failover() -> None:
    for name in policy_names():
        ranked = make_policy(name, random.Random(0)).rank(CTX, views(2, 0, 1))
        assert sorted(r.id for r in ranked) == ["r0", "r1", "r2"]


def test_registry_names_are_kebab_case() -> None:
    assert policy_names() == [
        "least-load", "precise-prefix-aware", "prefix-aware", "random", "round-robin",
        "session-aware"]
    with pytest.raises(KeyError):
        make_policy("nope", random.Random(0))
