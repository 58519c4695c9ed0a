"""Membership at run time, in process: the pool's lifecycle (ready -> draining ->
stopped) and everything keyed by replica following it: the model group and its
policies' memories (prefix index, session ring), LoRA residency, KV-block feeds and
metric series."""

from __future__ import annotations

import asyncio
import random

import pytest

from llmgw import pool as pool_module
from llmgw.build import KVFeeds, SeriesCleanup
from llmgw.config import ModelConfig, TimeoutConfig
from llmgw.engines.http1.pool import HTTPClient
from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.lora.catalog import Adapter, AdapterCatalog
from llmgw.lora.setup import make_lora_group
from llmgw.metrics import Metrics, ModelMetrics, ReplicaMetrics
from llmgw.model_group import ModelGroup
from llmgw.pool import Replica, ReplicaPool
from llmgw.routing.kv_block_index import StoredBlocks
from llmgw.routing.registry import make_policy
from llmgw.routing.session import pick_for_session
from llmgw.types import EngineStats, ReplicaAddress, ReplicaView, RequestContext


class Unreachable(OpenAIHTTPEngine):
    """A real engine client on an address nothing listens on; these tests never send."""


def unreachable(url: str) -> Unreachable:
    return Unreachable(url, None, HTTPClient())  # type: ignore[arg-type]  # no session


def replica(metrics: Metrics, rid: str, model: str = "m", kv: str | None = None) -> Replica:
    engine = unreachable(f"http://127.0.0.1:9/{rid}")
    r = Replica(rid, model, engine, ReplicaMetrics(metrics, model, rid, "p"),
                address=ReplicaAddress(rid, engine.url, kv))
    r.set_health(True)
    return r


def group(metrics: Metrics, policy: str = "session-aware") -> ModelGroup:
    return ModelGroup(name="m", upstream_model="m", engine=Unreachable,
                      policy=make_policy(policy, random.Random(1)), policy_name=policy,
                      timeouts=TimeoutConfig(), max_attempts=2,
                      metrics=ModelMetrics(metrics, "m"))


def ctx(prompt: str = "", session: str | None = None) -> RequestContext:
    return RequestContext(request_id="r", model="m", endpoint="chat", stream=False,
                          prompt=prompt, session_id=session)


def test_about_one_nth_of_sessions_move_when_a_replica_joins() -> None:
    views = [ReplicaView(id=f"r{i}", model="m") for i in range(4)]
    keys = [f"session-{i}" for i in range(4000)]
    before = {k: pick_for_session(k, views, 1.5).id for k in keys}
    after = {k: pick_for_session(k, [*views, ReplicaView(id="r4", model="m")], 1.5).id
             for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "r4" for k in moved)  # only to the newcomer
    assert 0.16 < len(moved) / len(keys) < 0.24  # ~1/5


def test_the_group_follows_the_pool_and_forgets_a_replica_that_left() -> None:
    async def run() -> None:
        metrics = Metrics()
        pool = ReplicaPool(interval_s=1, stats_interval_s=1)
        g = group(metrics, "prefix-aware")
        pool.watch("m", g)
        pool.watch("m", SeriesCleanup(metrics))
        a, b = replica(metrics, "a"), replica(metrics, "b")
        pool.add(a)
        pool.add(b)
        assert [v.id for v in g.views()] == ["a", "b"]
        prompt = "x" * 4096
        g.policy.on_routed(ctx(prompt), "a")
        assert g.policy.explain(ctx(prompt), g.views()).scores["prefix-cache"]["a"] == 1.0

        a.acquire()  # a request in flight on "a" while it drains
        drained = asyncio.create_task(pool.drain("a", timeout_s=30))
        await asyncio.sleep(0)
        assert a.state == "draining" and [v.id for v in g.views()] == ["b"]
        assert not drained.done()
        a.release()
        assert await drained
        pool.remove("a")
        assert a.state == "stopped" and g.replicas == [b]
        # The index forgot "a": a newcomer reusing the id starts cold.
        again = replica(metrics, "a")
        pool.add(again)
        assert g.policy.explain(ctx(prompt), g.views()).scores["prefix-cache"] == \
            {"a": 0.0, "b": 0.0}
        pool.remove("a")
        assert 'replica="a"' not in metrics.exposition().decode()
        assert 'replica="b"' in metrics.exposition().decode()

    asyncio.run(run())


def test_a_drain_that_outlasts_its_timeout_says_so() -> None:
    async def run() -> None:
        pool = ReplicaPool(interval_s=1, stats_interval_s=1)
        a = replica(Metrics(), "a")
        pool.add(a)
        a.acquire()
        assert not await pool.drain("a", timeout_s=0.01)
        assert a.state == "draining"

    asyncio.run(run())


def test_lora_residency_starts_empty_on_a_new_replica_and_forgets_a_removed_one() -> None:
    async def run() -> None:
        metrics = Metrics()
        model = ModelConfig(name="m", engine="transformers", model="demo",
                            replicas=1, lora={"adapters": []})
        catalog = AdapterCatalog([Adapter("x", "m", "/x")], {"m": []})
        lora = make_lora_group(model, catalog, None, metrics)  # type: ignore[arg-type]
        a = replica(metrics, "a")
        lora.added(a)
        assert lora.residency.resident("a") == frozenset() and a.max_adapters == 4
        lora.removed(a)
        assert lora.residency.resident("a") == frozenset()
        assert lora.residency.holders("x") == []

    asyncio.run(run())


def test_kv_feeds_forget_a_replica_that_left() -> None:
    async def run() -> None:
        metrics = Metrics()
        feeds = KVFeeds(metrics)
        index = feeds.index("m")
        a = replica(metrics, "a", kv=None)
        index.stored("a", StoredBlocks([1, 2], None, list(range(32)), 16))
        assert index.blocks("a") == 2
        feeds.removed(a)
        assert index.blocks("a") == 0
        await feeds.close()

    asyncio.run(run())


def test_a_slow_health_answer_is_not_a_dead_replica() -> None:
    """Issue 17 #4, the gateway's half: a check that times out (a live engine busy with a
    huge prompt) counts, and only failure_threshold in a row take the replica out; a
    refused connection or an error answer takes it out at once."""
    r = replica(Metrics(), "a")
    r.checked("timeout", failure_threshold=3)
    r.checked("timeout", failure_threshold=3)
    assert r.healthy
    r.checked("ok", failure_threshold=3)  # an answer resets the count
    r.checked("timeout", failure_threshold=3)
    r.checked("timeout", failure_threshold=3)
    assert r.healthy
    r.checked("timeout", failure_threshold=3)
    assert not r.healthy
    r.checked("ok", failure_threshold=3)
    assert r.healthy
    r.checked("down", failure_threshold=3)
    assert not r.healthy


def test_a_drain_on_a_shared_fleet_waits_for_other_gateways_requests(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Several gateways send one replica requests: this gateway's own count reaching zero
    is not enough; the engine's count (running + waiting, scraped) must reach zero too."""
    monkeypatch.setattr(pool_module, "_SHARED_SETTLE_S", 0.05)

    async def run() -> None:
        metrics = Metrics()
        pool = ReplicaPool(interval_s=1, stats_interval_s=1)
        busy, idle = replica(metrics, "m-0"), replica(metrics, "m-1")
        pool.add(busy)
        pool.add(idle)
        busy.set_stats(EngineStats(running=1, waiting=0))  # another gateway's request
        idle.set_stats(EngineStats(running=0, waiting=0))
        assert await pool.drain("m-0", 0.5)  # not shared: its own count is all it knows
        pool.shared = True
        assert not await pool.drain("m-0", 0.5)
        assert await pool.drain("m-1", 0.5)

    asyncio.run(run())
