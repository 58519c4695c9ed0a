"""Replicas coming and going: the families and what the fleet reports through them."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmgw.metrics.buckets import LATENCY_S

if TYPE_CHECKING:
    from llmgw.metrics.registry import Metrics


class FleetFamilies:
    """Replicas coming and going: the autoscaler's wishes and acts, scale-from-zero
    queues, starts, reloads and traffic splits."""

    def __init__(self, r: CollectorRegistry) -> None:
        pool = ["model", "pool"]
        self.replicas = Gauge(
            "llmgw_fleet_replicas", "Replicas by lifecycle state (starting, ready, "
            "draining) per model and pool (mixed, prefill, decode).", [*pool, "state"],
            multiprocess_mode="livemax", registry=r)
        self.desired = Gauge(
            "llmgw_autoscaler_desired_replicas", "Replicas the autoscaler (or the config) "
            "wants per pool.", pool, multiprocess_mode="livemax", registry=r)
        self.decisions = Counter(
            "llmgw_autoscaler_decisions", "Scaling acts by direction (up/down) and reason "
            "(load, kv_pressure, engine_queue, cold_start, idle).",
            [*pool, "direction", "reason"], registry=r)
        self.starts = Counter(
            "llmgw_replica_starts", "Replica launches by result (ok/failed).",
            [*pool, "result"], registry=r)
        self.lost = Counter(
            "llmgw_replicas_lost", "Replicas the placement backend lost for good (a Ray "
            "node died) and the fleet replaced.", pool, registry=r)
        self.start_duration = Histogram(
            "llmgw_replica_start_duration_seconds", "Time from launching a replica to its "
            "engine answering health checks.", pool, buckets=LATENCY_S, registry=r)
        self.queued = Gauge(
            "llmgw_queued_requests", "Requests waiting for a replica of a model scaled to "
            "zero (or whose first replica starts).", ["model"],
            multiprocess_mode="livesum", registry=r)
        self.reloads = Counter(
            "llmgw_config_reloads", "Config reloads by result (applied/refused).",
            ["result"], registry=r)
        self.split_requests = Counter(
            "llmgw_alias_requests", "Requests to an alias (traffic split) by the model "
            "they were sent to.", ["alias", "target"], registry=r)



class FleetMetrics:
    """What the fleet reports; pools are ``mixed``, ``prefill`` or ``decode``."""

    def __init__(self, metrics: Metrics) -> None:
        self._f = metrics.fleet
        self._pools: set[tuple[str, str]] = set()
        for result in ("applied", "refused"):  # 0 until the first reload, not "no data"
            self._f.reloads.labels(result)

    def managed(self, model: str, pool: str) -> None:
        """A pool the fleet launches: its start and loss series are exported from now
        on, at 0 until something happens (so a rate sees the first start too)."""
        for result in ("ok", "failed"):
            self._f.starts.labels(model, pool, result)
        self._f.lost.labels(model, pool)
        self._f.start_duration.labels(model, pool)

    def desired(self, model: str, pool: str, replicas: int) -> None:
        self._f.desired.labels(model, pool).set(replicas)

    def decided(self, model: str, pool: str, direction: str, reason: str) -> None:
        self._f.decisions.labels(model, pool, direction, reason).inc()

    def started(self, model: str, pool: str, *, ok: bool, seconds: float | None = None) -> None:
        self._f.starts.labels(model, pool, "ok" if ok else "failed").inc()
        if seconds is not None:
            self._f.start_duration.labels(model, pool).observe(seconds)

    def lost(self, model: str, pool: str) -> None:
        self._f.lost.labels(model, pool).inc()

    def reloaded(self, *, ok: bool) -> None:
        self._f.reloads.labels("applied" if ok else "refused").inc()

    def counts(self, counts: dict[tuple[str, str], dict[str, int]],
               queued: dict[str, int]) -> None:
        """Replicas per (model, pool) and state, and queued requests per model; series of
        pools and models that are gone are removed."""
        for (model, pool), states in counts.items():
            for state in ("starting", "ready", "draining"):
                self._f.replicas.labels(model, pool, state).set(states.get(state, 0))
        for model, pool in self._pools - set(counts):
            for state in ("starting", "ready", "draining"):
                with contextlib.suppress(KeyError):
                    self._f.replicas.remove(model, pool, state)
            with contextlib.suppress(KeyError):
                self._f.desired.remove(model, pool)
        self._pools = set(counts)
        for model, waiting in queued.items():
            self._f.queued.labels(model).set(waiting)
