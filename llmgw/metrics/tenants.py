"""API keys and gateway-side admission: the families and what tenancy reports."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmgw.metrics.buckets import LATENCY_S

if TYPE_CHECKING:
    from llmgw.metrics.registry import Metrics


class TenantFamilies:
    """API keys: what each key used and was refused, labelled by the key's name (never
    its secret). Key names are bounded by the config and the admin API."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "llmgw_key_requests", "Finished requests by API key name, model and HTTP status.",
            ["key", "model", "status"], registry=r)
        self.tokens = Counter(
            "llmgw_key_tokens", "Tokens by API key name and model, as the engines report "
            "them (kind: prompt/completion).", ["key", "model", "kind"], registry=r)
        self.rate_limited = Counter(
            "llmgw_key_rate_limited", "Requests refused with 429 by API key name and model, "
            "by the limit hit (key_/model_ requests, tokens, concurrency).",
            ["key", "model", "limit"], registry=r)
        self.in_flight = Gauge(
            "llmgw_key_in_flight_requests", "Requests open per API key name.", ["key"],
            multiprocess_mode="livesum", registry=r)
        self.admission_queued = Gauge(
            "llmgw_admission_queued_requests", "Requests waiting at the gateway for a "
            "saturated model (admission:).", ["model"], multiprocess_mode="livesum", registry=r)
        self.admission_wait = Histogram(
            "llmgw_admission_wait_seconds", "Time requests waited in a saturated model's "
            "queue, by API key name (\"\" without keys).", ["model", "key"],
            buckets=LATENCY_S, registry=r)
        self.admission_shed = Counter(
            "llmgw_admission_shed", "Requests refused 503 by a saturated model's queue, by "
            "priority and reason (queue_full, timeout).", ["model", "priority", "reason"],
            registry=r)
        self.auth_failures = Counter(
            "llmgw_auth_failures", "Requests refused with 401 (reason: missing or "
            "unknown key, or revoked while the request waited for admission).",
            ["reason"], registry=r)



class AdmissionMetrics:
    """Gateway-side queues of saturated models (``admission:``)."""

    def __init__(self, metrics: Metrics) -> None:
        self._t = metrics.tenants

    def queued(self, model: str, count: int) -> None:
        self._t.admission_queued.labels(model).set(count)

    def waited(self, model: str, key: str, seconds: float) -> None:
        self._t.admission_wait.labels(model, key).observe(seconds)

    def shed(self, model: str, priority: str, reason: str) -> None:
        self._t.admission_shed.labels(model, priority, reason).inc()


class TenantMetrics:
    """What tenancy reports, per key name."""

    def __init__(self, metrics: Metrics) -> None:
        self._t = metrics.tenants

    def finished(self, key: str, model: str, status: int, prompt: int | None,
                 completion: int | None) -> None:
        self._t.requests.labels(key, model, str(status)).inc()
        if prompt:
            self._t.tokens.labels(key, model, "prompt").inc(prompt)
        if completion:
            self._t.tokens.labels(key, model, "completion").inc(completion)

    def refused(self, key: str, model: str, limit: str) -> None:
        self._t.rate_limited.labels(key, model, limit).inc()

    def in_flight(self, key: str, count: int) -> None:
        self._t.in_flight.labels(key).set(count)

    def forget(self, key: str) -> None:
        """A revoked key's gauge goes (its counters stay: they are totals)."""
        with contextlib.suppress(KeyError):
            self._t.in_flight.remove(key)

    def auth_failed(self, reason: str) -> None:
        self._t.auth_failures.labels(reason).inc()

