"""Prometheus view of the scheduler, on a registry owned by the server object."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


def engine_registry(stats: Callable[[], SchedulerStats], model: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(stats, model))
    return registry
