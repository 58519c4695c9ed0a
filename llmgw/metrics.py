"""Every Prometheus metric of the gateway, defined once, in a registry the object owns.

Names are ``llmgw_<noun>_<unit>``; labels are bounded (model, replica, policy, status, code)
and never carry request ids.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmgw.types import EngineStats

# Latency buckets from 5 ms to 5 min: gateway overhead is ms, long generations are minutes.
_LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ITL_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536)


class Metrics:
    """Owns its CollectorRegistry, so two apps in one process never collide."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "llmgw_requests", "Finished requests by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"], registry=r,
        )
        self.request_errors = Counter(
            "llmgw_request_errors", "Errors sent to clients, by error code.",
            ["model", "code"], registry=r,
        )
        self.request_duration = Histogram(
            "llmgw_request_duration_seconds", "End-to-end request latency at the gateway.",
            ["model"], buckets=_LATENCY_S, registry=r,
        )
        self.time_to_first_token = Histogram(
            "llmgw_time_to_first_token_seconds", "Time from request to the first streamed chunk.",
            ["model"], buckets=_LATENCY_S, registry=r,
        )
        self.inter_token_latency = Histogram(
            "llmgw_inter_token_latency_seconds",
            "Mean time between streamed tokens, one observation per streamed request.",
            ["model"], buckets=_ITL_S, registry=r,
        )
        self.prompt_tokens = Counter(
            "llmgw_prompt_tokens", "Prompt tokens, as reported by the engines.",
            ["model"], registry=r,
        )
        self.completion_tokens = Counter(
            "llmgw_completion_tokens", "Completion tokens, as reported by the engines.",
            ["model"], registry=r,
        )
        self.request_tokens = Histogram(
            "llmgw_request_completion_tokens", "Completion tokens per request.",
            ["model"], buckets=_TOKENS, registry=r,
        )
        self.replica_in_flight = Gauge(
            "llmgw_replica_in_flight_requests", "Requests open on each replica, gateway-side.",
            ["model", "replica"], registry=r,
        )
        self.replica_healthy = Gauge(
            "llmgw_replica_healthy", "1 when the replica passes health checks, else 0.",
            ["model", "replica"], registry=r,
        )
        self.replica_restarts = Counter(
            "llmgw_replica_restarts", "Engine processes restarted by the launcher.",
            ["model", "replica"], registry=r,
        )
        self.routing_decisions = Counter(
            "llmgw_routing_decisions", "Replica picks by model, policy and chosen replica.",
            ["model", "policy", "replica"], registry=r,
        )
        self.upstream_retries = Counter(
            "llmgw_upstream_retries", "Requests retried on another replica before any byte.",
            ["model", "replica"], registry=r,
        )
        self.replica_ejections = Counter(
            "llmgw_replica_ejections", "Replicas taken out by outlier detection, by the "
            "failure that tipped them: connect, reset, 5xx, timeout.",
            ["model", "replica", "reason"], registry=r,
        )
        self.replica_ejected = Gauge(
            "llmgw_replica_ejected", "1 while outlier detection keeps the replica out "
            "(before it is half-open), else 0.", ["model", "replica"], registry=r,
        )
        self.retries_denied = Counter(
            "llmgw_retries_denied", "Retries the model's retry budget refused: the request "
            "failed with its last attempt's error.", ["model"], registry=r,
        )
        self.client_disconnects = Counter(
            "llmgw_client_disconnects", "Requests whose client went away; the engine was aborted.",
            ["model"], registry=r,
        )

        self.prefix_prediction_error = Histogram(
            "llmgw_prefix_prediction_error_ratio",
            "Predicted minus engine-reported cached share of the prompt, per request where "
            "the engine reports cached tokens: > 0 means the prefix index promised too much.",
            ["model"], buckets=(-0.75, -0.5, -0.25, -0.1, -0.02, 0.02, 0.1, 0.25, 0.5, 0.75, 1),
            registry=r,
        )
        self.shadow_decisions = Counter(
            "llmgw_shadow_decisions", "Live requests a shadow policy ranked, by agreement "
            "with the live pick.", ["model", "policy", "agreed"], registry=r)
        self.shadow_picks = Counter(
            "llmgw_shadow_picks", "The replica a shadow policy would have picked.",
            ["model", "policy", "replica"], registry=r)
        self.shadow_predicted_share = Histogram(
            "llmgw_shadow_predicted_cache_share",
            "Prompt share a shadow policy's pick would have found cached, by its index.",
            ["model", "policy"], buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), registry=r)
        # Engine-reported signals, scraped by the pool on an interval (may lag by that much).
        engine = ["model", "replica"]
        self.engine_running = Gauge(
            "llmgw_engine_requests_running", "Requests the engine reports running.",
            engine, registry=r)
        self.engine_waiting = Gauge(
            "llmgw_engine_requests_waiting", "Requests the engine reports queued.",
            engine, registry=r)
        self.engine_kv_usage = Gauge(
            "llmgw_engine_kv_cache_usage_ratio", "KV cache in use, 0..1, engine-reported.",
            engine, registry=r)
        self.engine_prefix_hits = Gauge(
            "llmgw_engine_prefix_cache_hit_tokens",
            "Prompt tokens served from the engine's prefix cache since it started.",
            engine, registry=r)
        self.engine_prefix_queries = Gauge(
            "llmgw_engine_prefix_cache_query_tokens",
            "Prompt tokens looked up in the engine's prefix cache since it started.",
            engine, registry=r)
        self.engine_kv_capacity = Gauge(
            "llmgw_engine_kv_cache_capacity_tokens",
            "The engine's KV cache size in tokens (blocks x block size).", engine, registry=r)

        # KV cache events (vLLM), feeding the precise prefix scorer's index.
        self.kv_events = Counter(
            "llmgw_kv_events", "KV cache events received from engines, by type "
            "(stored/removed/cleared blocks).", ["model", "replica", "type"], registry=r)
        self.kv_event_gaps = Counter(
            "llmgw_kv_event_gaps", "Event batches missed (sequence gaps) or engine restarts "
            "seen on the KV event stream; the index is then partly blind.",
            ["model", "replica", "kind"], registry=r)
        self.kv_index_blocks = Gauge(
            "llmgw_kv_index_blocks", "KV blocks the gateway believes each engine holds, "
            "from its events.", engine, registry=r)

        # LoRA multiplexing.
        self.lora_loads = Counter(
            "llmgw_lora_loads", "Adapter loads on replicas, by result (ok/failed) and by "
            "reason (demand: a request needed it; preload: it was hot).",
            ["model", "adapter", "result", "reason"], registry=r)
        self.lora_evictions = Counter(
            "llmgw_lora_evictions", "Adapters unloaded from a replica to make room.",
            ["model", "adapter"], registry=r)
        self.lora_load_duration = Histogram(
            "llmgw_lora_load_duration_seconds", "Time the engine took to load an adapter.",
            ["model"], buckets=_LATENCY_S, registry=r)
        self.lora_load_wait = Histogram(
            "llmgw_lora_load_wait_seconds", "Time requests waited for their adapter to load.",
            ["model"], buckets=_LATENCY_S, registry=r)
        self.lora_requests = Counter(
            "llmgw_lora_requests", "Requests per adapter.", ["model", "adapter"], registry=r)
        self.lora_request_rate = Gauge(
            "llmgw_lora_adapter_request_rate", "Requests/s per adapter (moving average), "
            "what hotness control acts on.", ["model", "adapter"], registry=r)
        self.lora_resident = Gauge(
            "llmgw_lora_adapter_resident", "1 when the replica holds the adapter.",
            ["model", "adapter", "replica"], registry=r)
        self.lora_resident_count = Gauge(
            "llmgw_lora_resident_adapters", "Adapters each replica holds.",
            ["model", "replica"], registry=r)
        self.lora_drift = Counter(
            "llmgw_lora_residency_drift", "Adapters the gateway believed resident that the "
            "engine's own listing lacked (or the reverse); the belief was corrected.",
            ["model", "replica"], registry=r)

        # Prefill-decode disaggregation (llmgw/disagg).
        self.pd_requests = Counter(
            "llmgw_pd_requests", "Requests to disaggregated models by the path they took "
            "(disaggregated; aggregated: decided up front; fallback: the prefill leg failed) "
            "and why (long_prompt, short_prompt, cached_prefix, prefill_saturated, "
            "no_prefill_replica, unsupported_request, prefill_timeout, prefill_unreachable, "
            "prefill_error, ...).", ["model", "path", "reason"], registry=r)
        self.pd_leg_duration = Histogram(
            "llmgw_pd_leg_duration_seconds", "Duration of each leg of disaggregated "
            "requests: prefill (sent to answered) and decode (sent to finished).",
            ["model", "leg"], buckets=_LATENCY_S, registry=r)
        self.pd_decode_first_token = Histogram(
            "llmgw_pd_decode_first_token_seconds", "Decode leg: time from sending it to its "
            "first token. Holds the KV transfer (connectors that pull load before the first "
            "step) plus one decode step: an upper bound on the transfer time.",
            ["model"], buckets=_LATENCY_S, registry=r)

        self.fleet = FleetFamilies(r)
        self.tenants = TenantFamilies(r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def forget_replica(self, model: str, replica: str) -> None:
        """Remove every series of a replica that left the fleet, in every family that
        has a ``replica`` label (engine gauges, LoRA residency, KV events, routing)."""
        families = [*vars(self).values(), *vars(self.fleet).values(),
                    *vars(self.tenants).values()]
        for family in families:
            if isinstance(family, Counter | Gauge | Histogram):
                for labels in _replica_label_sets(family, model, replica):
                    with contextlib.suppress(KeyError):
                        family.remove(*labels)


def _replica_label_sets(family: Counter | Gauge | Histogram, model: str,
                        replica: str) -> set[tuple[str, ...]]:
    """The label values of ``family``'s children for one replica, read from its samples
    (in label order; a histogram bucket's ``le`` is not a label of the child)."""
    found = set()
    for metric in family.collect():
        for sample in metric.samples:
            labels = sample.labels
            if labels.get("replica") == replica and labels.get("model") == model:
                found.add(tuple(v for k, v in labels.items() if k != "le"))
    return found


class FleetFamilies:
    """Replicas coming and going: the autoscaler's wishes and acts, scale-from-zero
    queues, starts, reloads and traffic splits."""

    def __init__(self, r: CollectorRegistry) -> None:
        pool = ["model", "pool"]
        self.replicas = Gauge(
            "llmgw_fleet_replicas", "Replicas by lifecycle state (starting, ready, "
            "draining) per model and pool (mixed, prefill, decode).", [*pool, "state"],
            registry=r)
        self.desired = Gauge(
            "llmgw_autoscaler_desired_replicas", "Replicas the autoscaler (or the config) "
            "wants per pool.", pool, registry=r)
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
            "engine answering health checks.", pool, buckets=_LATENCY_S, registry=r)
        self.queued = Gauge(
            "llmgw_queued_requests", "Requests waiting for a replica of a model scaled to "
            "zero (or whose first replica starts).", ["model"], registry=r)
        self.reloads = Counter(
            "llmgw_config_reloads", "Config reloads by result (applied/refused).",
            ["result"], registry=r)
        self.split_requests = Counter(
            "llmgw_alias_requests", "Requests to an alias (traffic split) by the model "
            "they were sent to.", ["alias", "target"], registry=r)


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
            registry=r)
        self.admission_queued = Gauge(
            "llmgw_admission_queued_requests", "Requests waiting at the gateway for a "
            "saturated model (admission:).", ["model"], registry=r)
        self.admission_wait = Histogram(
            "llmgw_admission_wait_seconds", "Time requests waited in a saturated model's "
            "queue, by API key name (\"\" without keys).", ["model", "key"],
            buckets=_LATENCY_S, registry=r)
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


class ModelMetrics:
    """The children of every per-model metric, bound once: ``labels()`` costs a lock and a
    dict lookup, which the per-request path would otherwise pay about ten times."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._metrics, self.model = metrics, model
        self.request_duration = metrics.request_duration.labels(model)
        self.time_to_first_token = metrics.time_to_first_token.labels(model)
        self.inter_token_latency = metrics.inter_token_latency.labels(model)
        self.prompt_tokens = metrics.prompt_tokens.labels(model)
        self.completion_tokens = metrics.completion_tokens.labels(model)
        self.request_tokens = metrics.request_tokens.labels(model)
        self.client_disconnects = metrics.client_disconnects.labels(model)
        self.prefix_prediction_error = metrics.prefix_prediction_error.labels(model)
        self.retries_denied = metrics.retries_denied.labels(model)
        self._requests: dict[tuple[str, int], Counter] = {}

    def requests(self, endpoint: str, status: int) -> Counter:
        key = (endpoint, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self._metrics.requests.labels(
                self.model, endpoint, str(status))
        return child

    def errors(self, code: str) -> Counter:
        return self._metrics.request_errors.labels(self.model, code)


class ReplicaMetrics:
    """The per-replica children, bound once per replica."""

    def __init__(self, metrics: Metrics, model: str, replica: str, policy: str) -> None:
        self._metrics, self._model, self._replica = metrics, model, replica
        self.in_flight = metrics.replica_in_flight.labels(model, replica)
        self.healthy = metrics.replica_healthy.labels(model, replica)
        self.routed = metrics.routing_decisions.labels(model, policy, replica)
        self.retries = metrics.upstream_retries.labels(model, replica)
        self.ejected = metrics.replica_ejected.labels(model, replica)
        self.restarts = metrics.replica_restarts.labels(model, replica)
        self.engine = (metrics.engine_running.labels(model, replica),
                       metrics.engine_waiting.labels(model, replica),
                       metrics.engine_kv_usage.labels(model, replica),
                       metrics.engine_prefix_hits.labels(model, replica),
                       metrics.engine_prefix_queries.labels(model, replica),
                       metrics.engine_kv_capacity.labels(model, replica))

    def ejections(self, reason: str) -> Counter:
        return self._metrics.replica_ejections.labels(self._model, self._replica, reason)

    def set_policy(self, policy: str) -> None:
        """The model's routing changed (reload): picks count under the new policy."""
        self.routed = self._metrics.routing_decisions.labels(self._model, policy, self._replica)

    def record_engine(self, stats: EngineStats) -> None:
        values = (stats.running, stats.waiting, stats.kv_usage, stats.prefix_cache_hits,
                  stats.prefix_cache_queries, stats.kv_capacity_tokens)
        for gauge, value in zip(self.engine, values, strict=True):
            if value is not None:
                gauge.set(value)


class ShadowMetrics:
    """One shadow policy's children for one model; picks bound per replica on first use."""

    def __init__(self, metrics: Metrics, model: str, policy: str) -> None:
        self._metrics, self._model, self._policy = metrics, model, policy
        self.agreed = metrics.shadow_decisions.labels(model, policy, "true")
        self.disagreed = metrics.shadow_decisions.labels(model, policy, "false")
        self.predicted_share = metrics.shadow_predicted_share.labels(model, policy)
        self._picks: dict[str, Counter] = {}

    def picked(self, replica: str) -> None:
        child = self._picks.get(replica)
        if child is None:
            child = self._picks[replica] = self._metrics.shadow_picks.labels(
                self._model, self._policy, replica)
        child.inc()


class KVEventMetrics:
    """One replica's KV event stream children."""

    def __init__(self, metrics: Metrics, model: str, replica: str) -> None:
        self.stored = metrics.kv_events.labels(model, replica, "stored")
        self.removed = metrics.kv_events.labels(model, replica, "removed")
        self.cleared = metrics.kv_events.labels(model, replica, "cleared")
        self.missed = metrics.kv_event_gaps.labels(model, replica, "missed")
        self.restarted = metrics.kv_event_gaps.labels(model, replica, "restart")
        self.blocks = metrics.kv_index_blocks.labels(model, replica)


class LoraMetrics:
    """One base model's LoRA children; per adapter and replica bound on first use (both
    bounded by the adapters the config and the admin API declare)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._m, self.model = metrics, model
        self.load_duration = metrics.lora_load_duration.labels(model)
        self.load_wait = metrics.lora_load_wait.labels(model)

    def loaded(self, adapter: str, ok: bool, reason: str) -> None:
        self._m.lora_loads.labels(self.model, adapter, "ok" if ok else "failed", reason).inc()

    def evicted(self, adapter: str) -> None:
        self._m.lora_evictions.labels(self.model, adapter).inc()

    def requested(self, adapter: str) -> None:
        self._m.lora_requests.labels(self.model, adapter).inc()

    def rate(self, adapter: str, value: float) -> None:
        self._m.lora_request_rate.labels(self.model, adapter).set(value)

    def residency(self, replica: str, adapters: frozenset[str], known: list[str]) -> None:
        self._m.lora_resident_count.labels(self.model, replica).set(len(adapters))
        for adapter in known:
            self._m.lora_resident.labels(self.model, adapter, replica).set(
                int(adapter in adapters))

    def forget(self, adapter: str, replicas: list[str]) -> None:
        """The adapter left the catalog: its gauges go, so no series claims it resident
        or requested forever (its counters stay: they are totals)."""
        self._m.lora_request_rate.remove(self.model, adapter)
        for replica in replicas:
            self._m.lora_resident.remove(self.model, adapter, replica)

    def drift(self, replica: str, amount: int) -> None:
        self._m.lora_drift.labels(self.model, replica).inc(amount)


class PDMetrics:
    """One disaggregated model's children; path/reason pairs bound on first use (both
    come from fixed sets in llmgw.disagg)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._m, self.model = metrics, model
        self.prefill_leg = metrics.pd_leg_duration.labels(model, "prefill")
        self.decode_leg = metrics.pd_leg_duration.labels(model, "decode")
        self.decode_first_token = metrics.pd_decode_first_token.labels(model)
        self._paths: dict[tuple[str, str], Counter] = {}

    def routed(self, path: str, reason: str) -> None:
        child = self._paths.get((path, reason))
        if child is None:
            child = self._paths[(path, reason)] = self._m.pd_requests.labels(
                self.model, path, reason)
        child.inc()


class FleetMetrics:
    """What the fleet reports; pools are ``mixed``, ``prefill`` or ``decode``."""

    def __init__(self, metrics: Metrics) -> None:
        self._f = metrics.fleet
        self._pools: set[tuple[str, str]] = set()

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
