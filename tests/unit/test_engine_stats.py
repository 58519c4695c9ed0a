from __future__ import annotations

from llmgw.engines.stats import VLLM_STATS, StatsNames, parse_samples, stats_from_text
from llmgw.types import EngineStats

# The shape of vLLM 0.3x's /metrics (numbers made up).
VLLM_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="demo"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="demo"} 2.0
vllm:kv_cache_usage_perc{engine="0",model_name="demo"} 0.25
vllm:prefix_cache_queries_total{engine="0",model_name="demo"} 1762.0
vllm:prefix_cache_hits_total{engine="0",model_name="demo"} 768.0
vllm:iteration_tokens_total_bucket{engine="0",le="1.0",model_name="demo"} 0.0
vllm:spec_decode_draft_acceptance_rate{engine="0",model_name="demo"} NaN
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="4096",sliding="None"} 1.0
"""


def test_vllm_metrics_become_engine_stats() -> None:
    assert stats_from_text(VLLM_TEXT, VLLM_STATS) == EngineStats(
        running=3, waiting=2, kv_usage=0.25, prefix_cache_hits=768.0,
        prefix_cache_queries=1762.0, kv_capacity_tokens=4096 * 16)


def test_samples_are_summed_over_label_sets_and_nan_skipped() -> None:
    text = 'a{x="1"} 1\na{x="2"} 2.5\nb 4\nc{le="+Inf"} NaN\n# a comment\n\nbroken\n'
    assert parse_samples(text) == {"a": 3.5, "b": 4.0}


def test_unknown_names_give_none_and_percent_is_scaled() -> None:
    names = StatsNames(running="nope", kv_usage="usage_pct", kv_usage_scale=100.0)
    assert stats_from_text("usage_pct 40\n", names) == EngineStats(kv_usage=0.4)


def test_kv_capacity_needs_both_labels() -> None:
    text = 'vllm:cache_config_info{block_size="16",engine="0"} 1.0\n'
    assert stats_from_text(text, VLLM_STATS).kv_capacity_tokens is None
