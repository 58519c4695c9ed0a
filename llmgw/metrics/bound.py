"""Per-model and per-replica views of the families, children bound once: the request
path calls these, never ``labels()``."""

from __future__ import annotations

from prometheus_client import Counter

from llmgw.metrics.fast import Add, adder, observer
from llmgw.metrics.registry import Metrics
from llmgw.types import EngineStats


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
        # What every answered request updates, as direct updates (llmgw.metrics.fast).
        self.observe_duration = observer(self.request_duration)
        self.observe_ttft = observer(self.time_to_first_token)
        self.observe_itl = observer(self.inter_token_latency)
        self.add_prompt_tokens = adder(self.prompt_tokens)
        self.add_completion_tokens = adder(self.completion_tokens)
        self.observe_request_tokens = observer(self.request_tokens)
        self._request_adders: dict[tuple[str, int], Add] = {}

    def count_request(self, endpoint: str, status: int) -> None:
        """One request ended with ``status`` (``llmgw_requests_total``), as a direct
        update of its child, bound on first use."""
        add = self._request_adders.get((endpoint, status))
        if add is None:
            add = self._request_adders[endpoint, status] = adder(
                self._metrics.requests.labels(self.model, endpoint, str(status)))
        add(1)

    def errors(self, code: str) -> Counter:
        return self._metrics.request_errors.labels(self.model, code)


class ReplicaMetrics:
    """The per-replica children, bound once per replica."""

    def __init__(self, metrics: Metrics, model: str, replica: str, policy: str) -> None:
        self._metrics, self._model, self._replica = metrics, model, replica
        metrics.live_replicas.add((model, replica))
        self.in_flight = metrics.replica_in_flight.labels(model, replica)
        self.affinity_factor = metrics.affinity_factor.labels(model, replica)
        self.affinity_factor.set(1.0)  # the configured weight until its engine says otherwise
        self.healthy = metrics.replica_healthy.labels(model, replica)
        self.routed = metrics.routing_decisions.labels(model, policy, replica)
        self.add_routed = adder(self.routed)
        self.add_in_flight = adder(self.in_flight)
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
        self.add_routed = adder(self.routed)

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
        # Exported at 0 from the first check on: "no correction" reads as 0, not "no data".
        self._m.lora_drift.labels(self.model, replica)
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


