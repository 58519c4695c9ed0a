"""CacheTrust: a replica's cache affinity shrinks toward load when the engine reports
fewer cached tokens than the prefix index predicted, within bounds, and comes back."""

from __future__ import annotations

import random

import pytest

from llmgw.config import PluginSpec, PolicyConfig
from llmgw.routing.base import Pipeline
from llmgw.routing.cache_trust import MIN_SAMPLES, CacheTrust
from llmgw.routing.registry import make_policy
from llmgw.types import ReplicaView, RequestContext

SYSTEM = "a shared system prompt of some length. " * 20


def observe(
    trust: CacheTrust, n: int, predicted: float, observed: float, replica: str = "r0"
) -> None:
    for _ in range(n):
        trust.observe(replica, predicted, observed)


def test_predictions_that_come_true_keep_the_full_weight() -> None:
    trust = CacheTrust()
    observe(trust, 100, 0.8, 0.8)
    observe(trust, 100, 0.5, 0.9)  # the engine held more than predicted: still 1
    assert trust.factor("r0") == 1.0
    assert trust.factors == {}


def test_overprediction_shrinks_the_factor_to_no_less_than_the_floor() -> None:
    trust = CacheTrust(floor=0.5)
    observe(trust, 200, 0.8, 0.6)
    assert trust.factor("r0") == pytest.approx(0.75)
    observe(trust, 500, 0.9, 0.0)  # the engine evicted everything
    assert trust.factor("r0") == 0.5
    assert trust.factor("r1") == 1.0  # per replica


def test_a_few_samples_move_nothing() -> None:
    trust = CacheTrust()
    observe(trust, MIN_SAMPLES - 1, 0.9, 0.0)
    assert trust.factor("r0") == 1.0
    observe(trust, 1, 0.9, 0.0)
    assert trust.factor("r0") == 0.5


def test_the_factor_recovers_when_predictions_come_true_again() -> None:
    trust = CacheTrust()
    observe(trust, 100, 0.9, 0.0)
    assert trust.factor("r0") == 0.5
    observe(trust, 20, 0.9, 0.9)
    assert 0.5 < trust.factor("r0") < 1.0  # gradually, not at once
    observe(trust, 200, 0.9, 0.9)
    assert trust.factor("r0") == pytest.approx(1.0, abs=1e-3)


def test_requests_with_nothing_predicted_and_nothing_cached_say_nothing() -> None:
    trust = CacheTrust()
    observe(trust, 100, 0.9, 0.0)
    observe(trust, 1000, 0.0, 0.0)
    assert trust.factor("r0") == 0.5


def test_a_floor_of_one_turns_it_off_and_forget_resets() -> None:
    off = CacheTrust(floor=1.0)
    observe(off, 100, 0.9, 0.0)
    assert off.factor("r0") == 1.0
    trust = CacheTrust()
    observe(trust, 100, 0.9, 0.0)
    trust.forget("r0")
    observe(trust, MIN_SAMPLES - 1, 0.9, 0.0)
    assert trust.factor("r0") == 1.0


def ctx(request_id: str, prompt: str) -> RequestContext:
    return RequestContext(
        request_id=request_id, model="m", endpoint="chat", stream=False, prompt=prompt
    )


def test_a_distrusted_replica_loses_to_load_and_shows_why() -> None:
    policy = make_policy("prefix-aware", random.Random(0))
    assert isinstance(policy, Pipeline)
    replicas = [
        ReplicaView(id="r0", model="m", in_flight=1),
        ReplicaView(id="r1", model="m", in_flight=0),
    ]
    policy.on_routed(ctx("seed", SYSTEM), "r0")
    asked = ctx("ask", SYSTEM + "and a question that only this request asks " * 3)
    trusted = policy.explain(asked, replicas)
    prefix = trusted.scores["prefix-cache"]["r0"]
    assert 0.5 < prefix < 1  # r0 holds most of the prompt: 2 x prefix > 1 x load
    assert [r.id for r in trusted.ranked] == ["r0", "r1"]
    assert trusted.as_dict()["affinity_factor"] == {"r0": 1.0, "r1": 1.0}

    for i in range(MIN_SAMPLES):  # r0's engine reports nothing cached, time after time
        policy.on_cached(ctx(f"q{i}", SYSTEM), "r0", 0.9, 0.0)
    doubted = policy.explain(asked, replicas)
    assert doubted.totals["r0"] == pytest.approx(trusted.totals["r0"] - prefix)  # 2 -> 1 x
    assert [r.id for r in doubted.ranked] == ["r1", "r0"]
    assert doubted.as_dict()["affinity_factor"] == {"r0": 0.5, "r1": 1.0}
    assert [r.id for r in policy.rank(asked, replicas)] == ["r1", "r0"]

    policy.forget("r0")
    assert policy.explain(asked, replicas).affinity_factor["r0"] == 1.0


def test_the_floor_comes_from_the_policy_config() -> None:
    spec = PolicyConfig(scorers=[PluginSpec(type="prefix-cache", weight=2)], cache_trust_floor=1.0)
    policy = make_policy("fixed", random.Random(0), {"fixed": spec})
    assert isinstance(policy, Pipeline)
    assert policy.trust.floor == 1.0
