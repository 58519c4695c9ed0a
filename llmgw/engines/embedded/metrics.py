"""Prometheus view of the scheduler, on a registry owned by the server object."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmgw.engines.embedded.adapters import LoRAStats
from llmgw.engines.embedded.generator import SchedulerStats


class SchedulerCollector(Collector):
    """Reads the scheduler's counters at scrape time, so nothing is double-booked.

    Also publishes vLLM's queue gauges under their vLLM names, so a scraper written
    for vLLM (`vllm:num_requests_running`, `..._waiting`) works on this engine too.
    """

    def __init__(self, stats: Callable[[], SchedulerStats], model: str) -> None:
        self._stats = stats
        self._model = model

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "llmgw_engine_requests_running", "Sequences in the decode batch.", value=s.running
        )
        yield GaugeMetricFamily(
            "llmgw_engine_requests_waiting", "Requests queued for a batch slot.", value=s.waiting
        )
        yield CounterMetricFamily(
            "llmgw_engine_requests_aborted",
            "Requests dropped because their client went away.",
            value=s.aborted_total,
        )
        for name, value in (("running", s.running), ("waiting", s.waiting)):
            gauge = GaugeMetricFamily(
                f"vllm:num_requests_{name}",
                f"vLLM-compatible alias of {name}.",
                labels=["model_name"],
            )
            gauge.add_metric([self._model], value)
            yield gauge


class LoRACollector(Collector):
    """Loaded adapters, plus vLLM's `vllm:lora_requests_info`: one series whose labels
    carry `max_lora` and the comma-joined adapter names of running and waiting
    requests, valued at the scrape's unix time (vLLM sets it to the time of its last
    stats update; readers take the newest series)."""

    def __init__(self, stats: Callable[[], LoRAStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield GaugeMetricFamily(
            "llmgw_engine_lora_adapters", "LoRA adapters loaded now.", value=s.loaded
        )
        info = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
        )
        labels = [str(s.max_loras), ",".join(s.running), ",".join(s.waiting)]
        info.add_metric(labels, time.time())
        yield info


class PreparingCollector(Collector):
    """Requests whose prompt is being rendered and tokenized (before the scheduler)."""

    def __init__(self, preparing: Callable[[], int]) -> None:
        self._preparing = preparing

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "llmgw_engine_requests_preparing",
            "Requests whose prompt is being rendered and tokenized.",
            value=self._preparing(),
        )


def engine_registry(
    stats: Callable[[], SchedulerStats],
    model: str,
    lora: Callable[[], LoRAStats] | None = None,
    preparing: Callable[[], int] | None = None,
) -> CollectorRegistry:
    """`lora` is given when LoRA is enabled; vLLM exports its gauge only then too."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(stats, model))
    if preparing is not None:
        registry.register(PreparingCollector(preparing))
    if lora is not None:
        registry.register(LoRACollector(lora))
    return registry
