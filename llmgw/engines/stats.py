"""Reading an engine's Prometheus text exposition into :class:`EngineStats`.

Each engine names its metrics differently; an engine class declares a
:class:`StatsNames` and this module does the rest. Samples of one name are summed over
their label sets (an engine serving several model names reports one series each).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmgw.types import EngineStats


@dataclass(frozen=True, slots=True)
class StatsNames:
    """The engine's metric names for each EngineStats field; None: not reported."""

    running: str | None = None
    waiting: str | None = None
    kv_usage: str | None = None
    prefix_cache_hits: str | None = None
    prefix_cache_queries: str | None = None
    # Some engines report KV usage in percent (0..100) rather than as a ratio.
    kv_usage_scale: float = 1.0
    # An info metric whose labels carry the KV cache size: (name, blocks label, block
    # size label); capacity = blocks x block size, in tokens.
    kv_capacity_labels: tuple[str, str, str] | None = None


def parse_samples(text: str) -> dict[str, float]:
    """Metric name -> value summed over its label sets. Comments and NaNs are skipped."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i > 0), default=-1)
        if name_end < 0:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1] if "}" not in line
                          else line[line.rindex("}") + 1 :].split()[0])
        except (ValueError, IndexError):
            continue
        if value != value:  # NaN
            continue
        name = line[:name_end]
        totals[name] = totals.get(name, 0.0) + value
    return totals


_LABEL = re.compile(r'(\w+)="([^"]*)"')


def info_labels(text: str, name: str) -> dict[str, str]:
    """The labels of the first sample of info metric ``name`` ({} if absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return dict(_LABEL.findall(line[len(name) : line.rfind("}") + 1]))
    return {}


def kv_capacity_tokens(text: str, names: StatsNames) -> int | None:
    if names.kv_capacity_labels is None:
        return None
    metric, blocks_label, size_label = names.kv_capacity_labels
    labels = info_labels(text, metric)
    try:
        return int(labels[blocks_label]) * int(labels[size_label])
    except (KeyError, ValueError):
        return None


def stats_from_text(text: str, names: StatsNames) -> EngineStats:
    samples = parse_samples(text)

    def get(name: str | None) -> float | None:
        return samples.get(name) if name is not None else None

    running, waiting, kv = get(names.running), get(names.waiting), get(names.kv_usage)
    return EngineStats(
        running=int(running) if running is not None else None,
        waiting=int(waiting) if waiting is not None else None,
        kv_usage=kv / names.kv_usage_scale if kv is not None else None,
        prefix_cache_hits=get(names.prefix_cache_hits),
        prefix_cache_queries=get(names.prefix_cache_queries),
        kv_capacity_tokens=kv_capacity_tokens(text, names),
    )


# vLLM's own names (v1 engine), also published by the embedded engine.
VLLM_STATS = StatsNames(
    running="vllm:num_requests_running",
    waiting="vllm:num_requests_waiting",
    kv_usage="vllm:kv_cache_usage_perc",  # a ratio despite its name
    prefix_cache_hits="vllm:prefix_cache_hits_total",
    prefix_cache_queries="vllm:prefix_cache_queries_total",
    kv_capacity_labels=("vllm:cache_config_info", "num_gpu_blocks", "block_size"),
)
