"""llmgw's Grafana dashboards, defined once here; ``python -m llmgw.dashboards`` writes
them to ``dashboards/grafana/`` and a test checks the committed files equal these.

Each panel's queries name metrics of ``llmgw/metrics/`` (checked when the JSON is built)
or, on the engines dashboard, vLLM's own (``vllm:*``, from Prometheus scraping the
engines). Panels marked ``needs="vllm"`` show data only with vLLM engines.
"""

from __future__ import annotations

from llmgw.dashboards.builder import Dashboard, Panel, Query, Row, Variable
from llmgw.dashboards.promql import MODEL, RATE, and_where, gauge, increase, quantile, rate, sel


def _model(metric: str) -> Variable:
    return Variable("model", "Model", metric, "model")


def _quantiles(histogram: str, by: str, *qs: float, where: str = MODEL,
               window: str = RATE, who: str = "{{model}}") -> tuple[Query, ...]:
    return tuple(Query(quantile(q, histogram, by, where, window), f"p{q * 100:g} {who}")
                 for q in qs)


def _ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / {denominator}"


def _prefix_hit_rate(by: str) -> str:
    return _ratio(rate("llmgw_engine_prefix_cache_hit_tokens", by),
                  rate("llmgw_engine_prefix_cache_query_tokens", by))


def _prefix_error_panel(title: str) -> Panel:
    return Panel(title, _quantiles("llmgw_prefix_prediction_error_ratio", "model", 0.5, 0.9),
                 unit="percentunit", needs="vllm",
                 description="Predicted minus engine-reported cached share of the prompt; "
                             "needs engines that report cached tokens (vLLM with "
                             "--enable-prompt-tokens-details).")


GATEWAY = Dashboard("llmgw-gateway", "llmgw gateway", (
    Panel("Requests/s by status", (
        Query(rate("llmgw_requests_total", "model, status"), "{{model}} {{status}}"),),
        unit="reqps"),
    Panel("Errors/s by code", (
        Query(rate("llmgw_request_errors_total", "model, code"), "{{model}} {{code}}"),),
        unit="reqps"),
    Panel("Latency p50 / p99",
          _quantiles("llmgw_request_duration_seconds", "model", 0.5, 0.99), unit="s"),
    Panel("Time to first token p50 / p99",
          _quantiles("llmgw_time_to_first_token_seconds", "model", 0.5, 0.99), unit="s"),
    Panel("Inter-token latency p50",
          _quantiles("llmgw_inter_token_latency_seconds", "model", 0.5), unit="s"),
    Panel("Tokens/s", (
        Query(rate("llmgw_prompt_tokens_total", "model"), "prompt {{model}}"),
        Query(rate("llmgw_completion_tokens_total", "model"), "completion {{model}}"))),
    Panel("In-flight per replica", (
        Query(sel("llmgw_replica_in_flight_requests"), "{{replica}}"),)),
    Panel("Replica health", (Query(sel("llmgw_replica_healthy"), "{{replica}}"),)),
    Panel("Routing decisions/s", (
        Query(rate("llmgw_routing_decisions_total", "model, policy, replica"),
              "{{replica}} ({{policy}})"),), unit="reqps"),
    Panel("Retries, restarts, disconnects", (
        Query(rate("llmgw_upstream_retries_total", "model"), "retries/s {{model}}"),
        Query(increase("llmgw_replica_restarts_total", "model", "1h"),
              "restarts (1h) {{model}}"),
        Query(rate("llmgw_client_disconnects_total", "model"), "disconnects/s {{model}}"))),
    Panel("Engine running / waiting", (
        Query(gauge("llmgw_engine_requests_running", "model, replica"),
              "running {{replica}}"),
        Query(gauge("llmgw_engine_requests_waiting", "model, replica"),
              "waiting {{replica}}"))),
    Panel("Engine KV cache usage", (
        Query(sel("llmgw_engine_kv_cache_usage_ratio"), "{{replica}}"),),
        unit="percentunit", needs="vllm"),
    Panel("Engine prefix-cache hit rate", (Query(_prefix_hit_rate("model"), "{{model}}"),),
          unit="percentunit", needs="vllm"),
    _prefix_error_panel("Prefix prediction error (predicted - actual cached share)"),
    Panel("Shadow policies: agreement with the live pick", (
        Query(_ratio(rate("llmgw_shadow_decisions_total", "model, policy",
                          and_where('agreed="true"', MODEL)),
                     rate("llmgw_shadow_decisions_total", "model, policy")),
              "{{model}} {{policy}}"),), unit="percentunit"),
    Panel("Shadow policies: would-be picks per replica", (
        Query(rate("llmgw_shadow_picks_total", "model, policy, replica"),
              "{{policy}} -> {{replica}}"),), unit="reqps"),
    Panel("Completion tokens per request p50 / p99",
          _quantiles("llmgw_request_completion_tokens", "model", 0.5, 0.99)),
), (_model("llmgw_requests_total"),),
    "Requests, errors, latency, tokens, replicas, routing and the engines' load, as the "
    "gateway sees them.")


ROUTING_LORA = Dashboard("llmgw-routing-lora", "llmgw: cache-aware routing and LoRA", (
    Panel("KV cache events from engines (vLLM)", (
        Query(rate("llmgw_kv_events_total", "model, replica, type"),
              "{{replica}} {{type}}"),), unit="ops", needs="vllm"),
    Panel("KV blocks the gateway believes each engine holds", (
        Query(sel("llmgw_kv_index_blocks"), "{{replica}}"),), needs="vllm"),
    Panel("KV event stream gaps and engine restarts", (
        Query(increase("llmgw_kv_event_gaps_total", "model, replica, kind", "15m"),
              "{{replica}} {{kind}}"),), needs="vllm"),
    _prefix_error_panel("Prefix prediction error p50 / p90 (predicted - engine cached share)"),
    Panel("Cache trust: factor on each replica's cache-affinity scores", (
        Query(sel("llmgw_routing_affinity_factor"), "{{model}} {{replica}}"),),
        description="1: the engine reports the cached tokens the gateway predicted; down to "
                    "cache_trust_floor when it reports fewer, and routing leans on load."),
    Panel("LoRA loads by result and reason", (
        Query(rate("llmgw_lora_loads_total", "model, result, reason"),
              "{{model}} {{result}} {{reason}}"),), unit="ops"),
    Panel("LoRA evictions", (
        Query(rate("llmgw_lora_evictions_total", "model, adapter"), "{{adapter}}"),),
        unit="ops"),
    Panel("LoRA load duration p95",
          _quantiles("llmgw_lora_load_duration_seconds", "model", 0.95), unit="s"),
    Panel("Requests waiting for their adapter to load, p95",
          _quantiles("llmgw_lora_load_wait_seconds", "model", 0.95), unit="s"),
    Panel("Adapter request rate (what hotness control acts on)", (
        Query(sel("llmgw_lora_adapter_request_rate"), "{{adapter}}"),), unit="reqps"),
    Panel("Adapters resident per replica", (
        Query(sel("llmgw_lora_resident_adapters"), "{{replica}}"),)),
    Panel("Adapter residency: which replica holds which adapter", (
        Query(f"{sel('llmgw_lora_adapter_resident')} == 1", "{{adapter}} on {{replica}}"),)),
    Panel("Residency corrections from engine listings", (
        Query(increase("llmgw_lora_residency_drift_total", "model, replica", "15m"),
              "{{replica}}"),)),
    Panel("Adapter requests/s", (
        Query(rate("llmgw_lora_requests_total", "model, adapter"), "{{adapter}}"),),
        unit="reqps"),
    Panel("Shadow policies: cached share their picks would have found, p50", (
        Query(quantile(0.5, "llmgw_shadow_predicted_cache_share", "model, policy"),
              "{{model}} {{policy}}"),), unit="percentunit",
        description="By each shadow policy's own prefix index (prefix-aware, kv-cache)."),
), (_model("llmgw_routing_decisions_total"),),
    "Prefix-cache routing (vLLM KV events, prediction error, shadow policies) and LoRA "
    "multiplexing.")


_KEY = 'key=~"$key"'
_ONE_KEY = 'key="$key"'

TENANTS = Dashboard("llmgw-tenants", "llmgw tenants", (
    Panel("Requests/s by key", (
        Query(rate("llmgw_key_requests_total", "key", _KEY), "{{key}}"),), unit="reqps"),
    Panel("429s/s by key and limit", (
        Query(rate("llmgw_key_rate_limited_total", "key, limit", _KEY),
              "{{key}} {{limit}}"),), unit="reqps"),
    Panel("Tokens/s by key", (
        Query(rate("llmgw_key_tokens_total", "key, kind", _KEY), "{{key}} {{kind}}"),)),
    Panel("Rejected keys/s (401)", (
        Query(rate("llmgw_auth_failures_total", "reason", ""), "{{reason}}"),),
        unit="reqps"),
    Panel("Admission: queued requests and sheds/s", (
        Query(gauge("llmgw_admission_queued_requests", "model", ""), "queued {{model}}"),
        Query(rate("llmgw_admission_shed_total", "model, priority, reason", ""),
              "shed {{model}} {{priority}} {{reason}}"))),
    Panel("Admission: queue wait p99 by key",
          _quantiles("llmgw_admission_wait_seconds", "key", 0.99, where=_KEY, who="{{key}}"),
          unit="s"),
    Row("Per tenant: $key", repeat="key"),
    Panel("$key: requests/s by model and status", (
        Query(rate("llmgw_key_requests_total", "model, status", _ONE_KEY),
              "{{model}} {{status}}"),), unit="reqps", width=8),
    Panel("$key: tokens/s and 429s/s", (
        Query(rate("llmgw_key_tokens_total", "kind", _ONE_KEY), "tokens {{kind}}"),
        Query(rate("llmgw_key_rate_limited_total", "limit", _ONE_KEY), "429 {{limit}}")),
        width=8),
    Panel("$key: requests in flight", (
        Query(f"sum({sel('llmgw_key_in_flight_requests', _ONE_KEY)})", "in flight"),),
        width=8),
), (Variable("key", "API key", "llmgw_key_requests_total", "key", all_value=None),),
    "API keys: requests, tokens and 429s per key, 401s, and the admission queues of "
    "saturated models.")


_PD_POOLS = and_where(MODEL, 'pool=~"prefill|decode"')
_PD_REPLICAS = and_where(MODEL, 'replica=~".+-(prefill|decode)-[0-9]+"')

PD = Dashboard("llmgw-pd", "llmgw: prefill-decode disaggregation", (
    Panel("Requests/s by path and reason", (
        Query(rate("llmgw_pd_requests_total", "model, path, reason"),
              "{{model}} {{path}} ({{reason}})"),), unit="reqps",
        description="disaggregated: two legs; aggregated: served whole on a decode "
                    "replica, decided up front; fallback: the prefill leg failed."),
    Panel("Share of requests split into two legs", (
        Query(_ratio(rate("llmgw_pd_requests_total", "model",
                          and_where('path="disaggregated"', MODEL)),
                     rate("llmgw_pd_requests_total", "model")), "{{model}}"),),
        unit="percentunit"),
    Panel("Leg duration p50 / p99",
          _quantiles("llmgw_pd_leg_duration_seconds", "model, leg", 0.5, 0.99,
                     who="{{model}} {{leg}}"), unit="s"),
    Panel("Decode leg: time to its first token p50 / p99 (bounds the KV transfer)",
          _quantiles("llmgw_pd_decode_first_token_seconds", "model", 0.5, 0.99), unit="s"),
    Panel("Replicas per pool", (
        Query(gauge("llmgw_fleet_replicas", "model, pool, state", _PD_POOLS),
              "{{model}}/{{pool}} {{state}}"),)),
    Panel("In flight per prefill / decode replica", (
        Query(gauge("llmgw_replica_in_flight_requests", "model, replica", _PD_REPLICAS),
              "{{replica}}"),)),
), (_model("llmgw_pd_requests_total"),),
    "Disaggregated models: which path requests take, each leg's time, the pools.")


_VLLM = "vLLM {{instance}}"
_ENGINES_NOTE = ("gateway: what llmgw read from each replica's /metrics (every "
                 "health.stats_interval_s); vLLM: the engines' own /metrics, scraped by "
                 "Prometheus as a job of its own.")


def _vllm_quantile(q: float, histogram: str) -> str:
    return (f"histogram_quantile({q:g}, sum by (le, instance) "
            f"(rate({histogram}_bucket[{RATE}])))")


def _vllm_rate(counter: str) -> str:
    return f"sum by (instance) (rate({counter}[{RATE}]))"


ENGINES = Dashboard("llmgw-engines", "llmgw: engines (the gateway's view and vLLM's own)", (
    Panel("Requests running", (
        Query(gauge("llmgw_engine_requests_running", "model, replica"),
              "gateway {{replica}}"),
        Query("sum by (instance) (vllm:num_requests_running)", _VLLM)),
        needs="vllm", description=_ENGINES_NOTE),
    Panel("Requests waiting", (
        Query(gauge("llmgw_engine_requests_waiting", "model, replica"),
              "gateway {{replica}}"),
        Query("sum by (instance) (vllm:num_requests_waiting)", _VLLM)),
        needs="vllm", description=_ENGINES_NOTE),
    Panel("KV cache usage", (
        Query(sel("llmgw_engine_kv_cache_usage_ratio"), "gateway {{replica}}"),
        Query("sum by (instance) (vllm:kv_cache_usage_perc)", _VLLM)),
        unit="percentunit", needs="vllm", description=_ENGINES_NOTE),
    Panel("Prefix-cache hit rate", (
        Query(_prefix_hit_rate("model, replica"), "gateway {{replica}}"),
        Query(_ratio(_vllm_rate("vllm:prefix_cache_hits_total"),
                     _vllm_rate("vllm:prefix_cache_queries_total")), _VLLM)),
        unit="percentunit", needs="vllm", description=_ENGINES_NOTE),
    Panel("Time to first token p99: at the gateway and in the engine", (
        Query(quantile(0.99, "llmgw_time_to_first_token_seconds", "model"),
              "gateway {{model}}"),
        Query(_vllm_quantile(0.99, "vllm:time_to_first_token_seconds"), _VLLM)),
        unit="s", needs="vllm",
        description="The gap is the gateway's routing, queueing and network time."),
    Panel("Request latency p99: at the gateway and in the engine", (
        Query(quantile(0.99, "llmgw_request_duration_seconds", "model"),
              "gateway {{model}}"),
        Query(_vllm_quantile(0.99, "vllm:e2e_request_latency_seconds"), _VLLM)),
        unit="s", needs="vllm"),
    Panel("Tokens/s: counted by the gateway and by the engines", (
        Query(rate("llmgw_prompt_tokens_total", "model"), "gateway prompt {{model}}"),
        Query(rate("llmgw_completion_tokens_total", "model"),
              "gateway completion {{model}}"),
        Query(_vllm_rate("vllm:prompt_tokens_total"), "vLLM prompt {{instance}}"),
        Query(_vllm_rate("vllm:generation_tokens_total"), "vLLM generation {{instance}}")),
        needs="vllm"),
    Panel("vLLM: queue time p99 and preemptions/s", (
        Query(_vllm_quantile(0.99, "vllm:request_queue_time_seconds"),
              "queue p99 {{instance}}"),
        Query(_vllm_rate("vllm:num_preemptions_total"), "preemptions/s {{instance}}")),
        needs="vllm"),
    Panel("KV cache size (tokens)", (
        Query(sel("llmgw_engine_kv_cache_capacity_tokens"), "{{replica}}"),),
        needs="vllm", description="Blocks x block size, from vllm:cache_config_info."),
), (_model("llmgw_replica_healthy"),),
    "Each engine as the gateway reads it beside the engine's own vLLM metrics.")


FLEET = Dashboard("llmgw-fleet", "llmgw: fleet and autoscaling", (
    Panel("Replicas by state", (
        Query(gauge("llmgw_fleet_replicas", "model, pool, state"),
              "{{model}}/{{pool}} {{state}}"),)),
    Panel("Desired and ready replicas", (
        Query(gauge("llmgw_autoscaler_desired_replicas", "model, pool"),
              "desired {{model}}/{{pool}}"),
        Query(gauge("llmgw_fleet_replicas", "model, pool", and_where(MODEL, 'state="ready"')),
              "ready {{model}}/{{pool}}"))),
    Panel("Autoscaler decisions (15 min)", (
        Query(increase("llmgw_autoscaler_decisions_total", "model, pool, direction, reason",
                       "15m"), "{{model}}/{{pool}} {{direction}} ({{reason}})"),)),
    Panel("Replica starts and losses (15 min)", (
        Query(increase("llmgw_replica_starts_total", "model, pool, result", "15m"),
              "started {{model}}/{{pool}} {{result}}"),
        Query(increase("llmgw_replicas_lost_total", "model, pool", "15m"),
              "lost {{model}}/{{pool}}"))),
    Panel("Replica start time p50 / p95 (1 h)",
          _quantiles("llmgw_replica_start_duration_seconds", "model, pool", 0.5, 0.95,
                     window="1h", who="{{model}}/{{pool}}"), unit="s"),
    Panel("Requests waiting for a replica (scale from zero)", (
        Query(gauge("llmgw_queued_requests", "model"), "{{model}}"),)),
    Panel("Config reloads (1 h)", (
        Query(increase("llmgw_config_reloads_total", "result", "1h", ""), "{{result}}"),)),
    Panel("Traffic splits: requests/s by alias and target", (
        Query(rate("llmgw_alias_requests_total", "alias, target", ""),
              "{{alias}} -> {{target}}"),), unit="reqps"),
), (_model("llmgw_fleet_replicas"),),
    "Replicas starting, serving and draining, the autoscalers' wishes and acts, "
    "scale-from-zero queues, reloads and traffic splits.")


RESILIENCE = Dashboard("llmgw-resilience", "llmgw: resilience", (
    Panel("Outlier ejections by reason (15 min)", (
        Query(increase("llmgw_replica_ejections_total", "model, replica, reason", "15m"),
              "{{replica}} {{reason}}"),),
        description="Replicas taken out because their requests failed (connect, reset, "
                    "5xx, timeout): health.outlier."),
    Panel("Replicas healthy and ejected", (
        Query(gauge("llmgw_replica_healthy", "model"), "healthy {{model}}"),
        Query(gauge("llmgw_replica_ejected", "model"), "ejected {{model}}"))),
    Panel("Retries/s and retries the budget denied", (
        Query(rate("llmgw_upstream_retries_total", "model, replica"),
              "retried on {{replica}}"),
        Query(rate("llmgw_retries_denied_total", "model"), "denied {{model}}")),
        unit="reqps"),
    Panel("Share of requests answered 5xx", (
        Query(_ratio(rate("llmgw_requests_total", "model",
                          and_where('status=~"5.."', MODEL)),
                     rate("llmgw_requests_total", "model")), "{{model}}"),),
        unit="percentunit"),
    Panel("Errors/s by code", (
        Query(rate("llmgw_request_errors_total", "model, code"), "{{model}} {{code}}"),),
        unit="reqps"),
    Panel("Engine restarts (1 h) and client disconnects/s", (
        Query(increase("llmgw_replica_restarts_total", "model, replica", "1h"),
              "restarts {{replica}}"),
        Query(rate("llmgw_client_disconnects_total", "model"), "disconnects {{model}}"))),
), (_model("llmgw_replica_healthy"),),
    "Failing replicas ejected and back, retries and their budget, 5xx answers.")


TOOL = 'tool=~"$tool"'
TOOLS = Dashboard("llmgw-tools", "llmgw: tools", (
    Panel("Tool calls/s by tool and outcome", (
        Query(rate("llmgw_tool_calls_total", "tool, outcome", TOOL), "{{tool}} {{outcome}}"),),
        unit="reqps"),
    Panel("Failed share of tool calls (not ok, not invalid)", (
        Query(_ratio(rate("llmgw_tool_calls_total", "tool",
                          and_where(TOOL, 'outcome!~"ok|invalid"')),
                     rate("llmgw_tool_calls_total", "tool", TOOL)), "{{tool}}"),),
        unit="percentunit"),
    Panel("Tool call latency p50 / p99",
          _quantiles("llmgw_tool_call_duration_seconds", "tool", 0.5, 0.99, where=TOOL,
                     who="{{tool}}"), unit="s"),
    Panel("Batch size per call (mean, p90)", (
        Query(_ratio(rate("llmgw_tool_batch_size_sum", "tool", TOOL),
                     rate("llmgw_tool_batch_size_count", "tool", TOOL)), "mean {{tool}}"),
        *_quantiles("llmgw_tool_batch_size", "tool", 0.9, where=TOOL, who="{{tool}}"))),
    Panel("Tool calls in flight by deployment", (
        Query(gauge("llmgw_tool_in_flight_calls", "deployment", ""), "{{deployment}}"),),
        width=8),
    Panel("Healthy tool replicas", (
        Query(gauge("llmgw_tool_replica_healthy", "deployment", ""), "{{deployment}}"),),
        width=8),
    Panel("Tool worker restarts (1 h)", (
        Query(increase("llmgw_tool_replica_restarts_total", "deployment, replica", "1h", ""),
              "{{deployment}} {{replica}}"),), width=8),
    Panel("Model rounds per server-side tool loop (p50, p90)",
          _quantiles("llmgw_tool_loop_rounds", "model", 0.5, 0.9, where=""), width=24),
), (Variable("tool", "Tool", "llmgw_tool_calls_total", "tool"),),
    "Python deployments served as tools: calls, failures, latency, batching, workers.")


DASHBOARDS: tuple[Dashboard, ...] = (GATEWAY, ROUTING_LORA, TENANTS, PD, ENGINES, FLEET,
                                     RESILIENCE, TOOLS)
