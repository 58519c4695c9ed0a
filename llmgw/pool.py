"""Replicas and their health: the only owner of mutable per-replica state.

A :class:`Replica` counts its own in-flight requests and health; routing sees only the
frozen :class:`ReplicaView` it hands out. The pool's loop checks health on an interval, so
a dead replica leaves rotation within one interval (sooner when a request fails to connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from llmgw.engines.base import Engine
from llmgw.metrics import ReplicaMetrics
from llmgw.types import EngineStats, ReplicaView, Role

log = logging.getLogger("llmgw.pool")


class Replica:
    """One engine server behind a model. Mutated only from the event loop thread."""

    __slots__ = ("id", "model", "engine", "role", "healthy", "in_flight", "metrics", "stats",
                 "adapters", "max_adapters")

    def __init__(
        self, id: str, model: str, engine: Engine, metrics: ReplicaMetrics, *,
        role: Role = "mixed",
    ) -> None:
        self.id = id
        self.model = model
        self.engine = engine
        self.role: Role = role
        self.healthy = False
        self.in_flight = 0
        self.metrics = metrics
        self.stats = EngineStats()
        # LoRA adapters the engine holds and its slots, kept by llmgw.lora.residency.
        self.adapters: frozenset[str] = frozenset()
        self.max_adapters = 0
        metrics.in_flight.set(0)
        metrics.healthy.set(0)

    def view(self) -> ReplicaView:
        return ReplicaView(
            id=self.id, model=self.model, role=self.role,
            healthy=self.healthy, in_flight=self.in_flight,
            queue_depth=self.stats.waiting, kv_usage=self.stats.kv_usage,
            kv_capacity_tokens=self.stats.kv_capacity_tokens,
            adapters=self.adapters, max_adapters=self.max_adapters,
        )

    def acquire(self) -> None:
        self.in_flight += 1
        self.metrics.in_flight.inc()

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.dec()

    def set_stats(self, stats: EngineStats | None) -> None:
        # Stale numbers are worse than none: a replica whose stats cannot be read
        # routes on the gateway's own in-flight count alone.
        self.stats = stats or EngineStats()
        if stats is not None:
            self.metrics.record_engine(stats)

    def set_health(self, healthy: bool) -> None:
        if healthy != self.healthy:
            log.info("replica %s/%s is %s", self.model, self.id, "up" if healthy else "down")
            self.healthy = healthy
            self.metrics.healthy.set(int(healthy))


class ReplicaPool:
    """All replicas of all models, with a background health loop."""

    def __init__(self, replicas: Iterable[Replica], *, interval_s: float,
                 stats_interval_s: float) -> None:
        self._by_model: dict[str, list[Replica]] = {}
        for replica in replicas:
            self._by_model.setdefault(replica.model, []).append(replica)
        self._interval = interval_s
        self._stats_interval = stats_interval_s
        self._tasks: list[asyncio.Task[None]] = []

    def replicas(self, model: str) -> list[Replica]:
        return self._by_model.get(model, [])

    def all(self) -> list[Replica]:
        return [r for group in self._by_model.values() for r in group]

    def ready(self, model: str) -> bool:
        # Prefill replicas alone cannot answer a request; a decode or mixed one can.
        return any(r.healthy and r.role != "prefill" for r in self.replicas(model))

    async def check_all(self) -> None:
        replicas = self.all()
        results = await asyncio.gather(*(r.engine.health() for r in replicas))
        for replica, healthy in zip(replicas, results, strict=True):
            replica.set_health(healthy)

    async def scrape_all(self) -> None:
        replicas = [r for r in self.all() if r.healthy]
        results = await asyncio.gather(*(r.engine.stats() for r in replicas))
        for replica, stats in zip(replicas, results, strict=True):
            replica.set_stats(stats)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(self._interval, self.check_all), name="health"),
            asyncio.create_task(self._every(self._stats_interval, self.scrape_all),
                                name="engine-stats"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    async def _every(interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await work()
            except Exception:  # a bug here must not stop the loop for good
                log.exception("%s failed", getattr(work, "__name__", work))
            await asyncio.sleep(interval_s)
