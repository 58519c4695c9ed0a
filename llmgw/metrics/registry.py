"""The gateway's registry and its request, replica, routing, LoRA, KV-event and PD
families; fleet and tenant families live beside it (``fleet``, ``tenants``)."""

from __future__ import annotations

import contextlib
import warnings

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmgw.metrics import multiprocess
from llmgw.metrics.buckets import ITL_S, LATENCY_S, TOKENS
from llmgw.metrics.fleet import FleetFamilies
from llmgw.metrics.tenants import TenantFamilies
from llmgw.metrics.tools import ToolFamilies


class Metrics:
    """Owns its CollectorRegistry, so two apps in one process never collide. Each gauge
    names how several workers' values merge (``multiprocess_mode``, ignored with one
    process: llmgw/metrics/multiprocess.py)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # (model, replica) of every replica whose series this process made and has not
        # forgotten: with several workers, the exposition shows no other replica's series
        # (the shared files keep a departed replica's values for good).
        self.live_replicas: set[tuple[str, str]] = set()
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
            ["model"], buckets=LATENCY_S, registry=r,
        )
        self.time_to_first_token = Histogram(
            "llmgw_time_to_first_token_seconds", "Time from request to the first streamed chunk.",
            ["model"], buckets=LATENCY_S, registry=r,
        )
        self.inter_token_latency = Histogram(
            "llmgw_inter_token_latency_seconds",
            "Mean time between streamed tokens, one observation per streamed request.",
            ["model"], buckets=ITL_S, registry=r,
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
            ["model"], buckets=TOKENS, registry=r,
        )
        self.affinity_factor = Gauge(
            "llmgw_routing_affinity_factor",
            "The factor (cache_trust_floor..1) on each replica's cache-affinity scores: "
            "below 1 when its engine reports fewer cached tokens than the gateway predicted.",
            # Each worker learns its own; the least trusting one shows.
            ["model", "replica"], multiprocess_mode="livemin", registry=r,
        )
        self.replica_in_flight = Gauge(
            "llmgw_replica_in_flight_requests", "Requests open on each replica, gateway-side.",
            ["model", "replica"], multiprocess_mode="livesum", registry=r,
        )
        self.replica_healthy = Gauge(
            "llmgw_replica_healthy", "1 when the replica passes health checks, else 0.",
            ["model", "replica"], multiprocess_mode="livemax", registry=r,
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
            "(before it is half-open), else 0.", ["model", "replica"],
            multiprocess_mode="livemax", registry=r,
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
            engine, multiprocess_mode="livemostrecent", registry=r)
        self.engine_waiting = Gauge(
            "llmgw_engine_requests_waiting", "Requests the engine reports queued.",
            engine, multiprocess_mode="livemostrecent", registry=r)
        self.engine_kv_usage = Gauge(
            "llmgw_engine_kv_cache_usage_ratio", "KV cache in use, 0..1, engine-reported.",
            engine, multiprocess_mode="livemostrecent", registry=r)
        self.engine_prefix_hits = Gauge(
            "llmgw_engine_prefix_cache_hit_tokens",
            "Prompt tokens served from the engine's prefix cache since it started.",
            engine, multiprocess_mode="livemostrecent", registry=r)
        self.engine_prefix_queries = Gauge(
            "llmgw_engine_prefix_cache_query_tokens",
            "Prompt tokens looked up in the engine's prefix cache since it started.",
            engine, multiprocess_mode="livemostrecent", registry=r)
        self.engine_kv_capacity = Gauge(
            "llmgw_engine_kv_cache_capacity_tokens",
            "The engine's KV cache size in tokens (blocks x block size).", engine,
            multiprocess_mode="livemostrecent", registry=r)

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
            "from its events.", engine, multiprocess_mode="livemostrecent", registry=r)

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
            ["model"], buckets=LATENCY_S, registry=r)
        self.lora_load_wait = Histogram(
            "llmgw_lora_load_wait_seconds", "Time requests waited for their adapter to load.",
            ["model"], buckets=LATENCY_S, registry=r)
        self.lora_requests = Counter(
            "llmgw_lora_requests", "Requests per adapter.", ["model", "adapter"], registry=r)
        self.lora_request_rate = Gauge(
            "llmgw_lora_adapter_request_rate", "Requests/s per adapter (moving average), "
            "what hotness control acts on.", ["model", "adapter"],
            multiprocess_mode="livesum", registry=r)
        self.lora_resident = Gauge(
            "llmgw_lora_adapter_resident", "1 when the replica holds the adapter.",
            ["model", "adapter", "replica"], multiprocess_mode="livemax", registry=r)
        self.lora_resident_count = Gauge(
            "llmgw_lora_resident_adapters", "Adapters each replica holds.",
            ["model", "replica"], multiprocess_mode="livemax", registry=r)
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
            ["model", "leg"], buckets=LATENCY_S, registry=r)
        self.pd_decode_first_token = Histogram(
            "llmgw_pd_decode_first_token_seconds", "Decode leg: time from sending it to its "
            "first token. Holds the KV transfer (connectors that pull load before the first "
            "step) plus one decode step: an upper bound on the transfer time.",
            ["model"], buckets=LATENCY_S, registry=r)

        self.fleet = FleetFamilies(r)
        self.tenants = TenantFamilies(r)
        self.tools = ToolFamilies(r)

    def exposition(self) -> bytes:
        # Several workers (llmgw/metrics/multiprocess.py): every process's samples, merged.
        shared = multiprocess.shared_dir()
        return generate_latest(self.registry) if shared is None \
            else multiprocess.exposition(shared, keep=self._current)

    def _current(self, labels: dict[str, str]) -> bool:
        """Whether a sample belongs to no replica, or to one still in the fleet."""
        replica, model = labels.get("replica"), labels.get("model")
        return replica is None or model is None or (model, replica) in self.live_replicas

    def forget_replica(self, model: str, replica: str) -> None:
        """Remove every series of a replica that left the fleet, in every family that
        has a ``replica`` label (engine gauges, LoRA residency, KV events, routing). With
        several workers the shared files keep its values: the exposition leaves them out
        (``live_replicas``), and prometheus-client's warning that removal does not reach
        the files is expected."""
        self.live_replicas.discard((model, replica))
        families = [*vars(self).values(), *vars(self.fleet).values(),
                    *vars(self.tenants).values()]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Removal of labels", UserWarning)
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

