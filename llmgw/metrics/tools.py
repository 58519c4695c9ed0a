"""Tools (``tools:``): calls, their outcomes and latency, batch sizes, worker health."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmgw.metrics.buckets import LATENCY_S

# Calls per batch: powers of two up to the largest max_batch_size worth running.
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Model rounds of a tool loop: 1 (no hosted call) up to the cap of 32 rounds of calls + 1.
ROUNDS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 33)


class ToolFamilies:
    """Labelled by tool name (bounded by the config) and, for workers, replica id."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.calls = Counter(
            "llmgw_tool_calls", "Finished tool calls by tool and outcome (ok, invalid, "
            "error: the tool raised, timeout, unavailable, lost: the worker went away).",
            ["tool", "outcome"], registry=r)
        self.duration = Histogram(
            "llmgw_tool_call_duration_seconds", "Tool calls from arrival to answer, waiting "
            "for a free replica included, by tool.", ["tool"], buckets=LATENCY_S, registry=r)
        self.batch_size = Histogram(
            "llmgw_tool_batch_size", "Calls in the batch each call of a batched tool ran in "
            "(one observation per call).", ["tool"], buckets=BATCH_SIZES, registry=r)
        self.in_flight = Gauge(
            "llmgw_tool_in_flight_calls", "Tool calls running now, by deployment.",
            ["deployment"], multiprocess_mode="livesum", registry=r)
        self.healthy = Gauge(
            "llmgw_tool_replica_healthy", "1 when a tool replica passes its health check.",
            ["deployment", "replica"], multiprocess_mode="livemax", registry=r)
        self.loop_rounds = Histogram(
            "llmgw_tool_loop_rounds", "Model rounds of each finished server-side tool loop "
            "(chat completions naming the gateway's tools), by model.", ["model"],
            buckets=ROUNDS, registry=r)
        self.restarts = Counter(
            "llmgw_tool_replica_restarts", "Tool worker processes restarted after exiting, or "
            "started again elsewhere after their Ray actor or node was lost.",
            ["deployment", "replica"], registry=r)
