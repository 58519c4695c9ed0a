"""The orchestrator's plan over real replicas and policies: which pool ranks what, the
path, and the explanation. Nothing is sent (planning does no I/O)."""

from __future__ import annotations

import random

import pytest

from llmgw.config import ConditionalPDConfig
from llmgw.disagg.legs import Legs
from llmgw.disagg.orchestrator import Disaggregation
from llmgw.disagg.sglang_flow import SGLangFlow
from llmgw.disagg.vllm_flow import VLLMFlow
from llmgw.errors import NoReplica
from llmgw.metrics import Metrics, PDMetrics, ReplicaMetrics
from llmgw.pool import Replica
from llmgw.routing.registry import make_policy
from llmgw.types import RequestContext

LONG = "word " * 400  # ~500 tokens at 4 characters per token


class Unused:
    """Planning never talks to an engine."""

    url = "http://127.0.0.1:1"


def replicas(metrics: Metrics) -> list[Replica]:
    out = []
    for rid, role in [("p0", "prefill"), ("p1", "prefill"), ("d0", "decode"), ("d1", "decode")]:
        replica = Replica(rid, "m", Unused(), ReplicaMetrics(metrics, "m", rid, "x"),  # type: ignore[arg-type]
                          role=role)  # type: ignore[arg-type]
        replica.set_health(True)
        out.append(replica)
    return out


def disagg(decode_policy: str = "least-load", sglang: bool = False,
           **conditional: object) -> tuple[Disaggregation, dict[str, Replica]]:
    metrics = Metrics()
    pool = replicas(metrics)
    legs = Legs(make_policy("least-load", random.Random(1)),
                make_policy(decode_policy, random.Random(2)), PDMetrics(metrics, "m"), 2)
    flow = SGLangFlow(5, random.Random(0)) if sglang else VLLMFlow(5)
    cfg = ConditionalPDConfig(min_prompt_tokens=256, max_prefill_load=2).model_copy(
        update=conditional)
    d = Disaggregation("m", legs, flow, cfg)
    for replica in pool:
        d.added(replica)
    return d, {r.id: r for r in pool}


def ctx(prompt: str, request_id: str = "r1") -> RequestContext:
    return RequestContext(request_id=request_id, model="m", endpoint="chat", stream=False,
                          prompt=prompt)


def test_a_long_prompt_is_planned_on_both_pools_with_its_reasons() -> None:
    d, by_id = disagg()
    by_id["d0"].acquire()  # d1 is less loaded
    by_id["p1"].acquire()  # p0 is less loaded
    plan = d.plan(ctx(LONG), {"messages": []})
    assert (plan.path, plan.reason, [r.id for r in plan.decode],
            [r.id for r in plan.prefill]) == ("disaggregated", "long_prompt", ["d1", "d0"],
                                              ["p0", "p1"])
    assert plan.decision.disaggregation == {
        "path": "disaggregated", "reason": "long_prompt", "prompt_tokens": 500,
        "decode_cached_share": None,
        "prefill": {"ranked": ["p0", "p1"], "dropped": {},
                    "scores": {"least-load": {"p0": 1.0, "p1": 0.0}},
                    "totals": {"p0": 1.0, "p1": 0.0}, "guard": None,
                    "predicted_cached_share": {}}}
    assert plan.decision.as_dict()["ranked"] == ["d1", "d0"]


@pytest.mark.parametrize(("setup", "body", "want"), [
    ("short", {"messages": []}, ("aggregated", "short_prompt")),
    ("saturated", {"messages": []}, ("aggregated", "prefill_saturated")),
    ("prefill-down", {"messages": []}, ("aggregated", "no_prefill_replica")),
    ("n2", {"messages": [], "n": 2}, ("aggregated", "unsupported_request")),
], ids=["short", "saturated", "prefill-down", "n>1"])
def test_requests_that_gain_nothing_are_planned_aggregated(
        setup: str, body: dict[str, object], want: tuple[str, str]) -> None:
    d, by_id = disagg()
    prompt = "hi" if setup == "short" else LONG
    if setup == "saturated":
        for rid in ("p0", "p0", "p1", "p1"):
            by_id[rid].acquire()
    if setup == "prefill-down":
        by_id["p0"].set_health(False)
        by_id["p1"].set_health(False)
    plan = d.plan(ctx(prompt), body)
    assert (plan.path, plan.reason, plan.prefill) == (*want, [])
    assert plan.decision.disaggregation["prefill"] is None


def test_a_prefix_the_decode_replica_holds_is_served_there_whole() -> None:
    d, _ = disagg(decode_policy="prefix-aware")
    first = d.plan(ctx(LONG, "r1"), {"messages": []})
    assert first.path == "disaggregated"
    d.legs.decode_policy.on_routed(ctx(LONG, "r1"), first.decode[0].id)
    again = d.plan(ctx(LONG, "r2"), {"messages": []})
    assert (again.path, again.reason, again.decode[0].id) == (
        "aggregated", "cached_prefix", first.decode[0].id)
    assert again.decision.disaggregation["decode_cached_share"] == 1.0


def test_sglang_always_splits_and_without_decode_nothing_is_served() -> None:
    d, by_id = disagg(sglang=True)
    assert d.plan(ctx("hi"), {"messages": []}).reason == "required"
    for rid in ("d0", "d1"):
        by_id[rid].set_health(False)
    with pytest.raises(NoReplica, match="no healthy decode replica"):
        d.plan(ctx("hi"), {"messages": []})
    assert d.explain(ctx("hi")).as_dict()["disaggregation"] == {
        "path": None, "error": "no healthy decode replica for model 'm'; retry shortly"}


def test_needs_follow_the_policies_and_the_length_rule() -> None:
    assert disagg()[0].needs == frozenset({"prompt"})
    assert disagg(enabled=False)[0].needs == frozenset()
    assert disagg(decode_policy="session-aware", enabled=False)[0].needs == frozenset(
        {"prompt", "session"})
