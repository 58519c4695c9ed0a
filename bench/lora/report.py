"""What one policy's turns add up to: the gateway's own LoRA counters (from its /metrics)
and the client's view of every request; the markdown table and the goals."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from bench.lora.workload import Outcome, percentile

# Goals of the issue: adapter-aware routing loads at least 3x fewer adapters than random,
# and its p99 latency is lower.
LOADS_GOAL = 3.0


@dataclass
class LoraCounters:
    """Sums over adapters of the gateway's LoRA counters for one turn."""

    demand_loads: float = 0.0  # llmgw_lora_loads_total{result="ok", reason="demand"}
    preload_loads: float = 0.0  # ... reason="preload" (hotness control)
    failed_loads: float = 0.0  # result="failed", either reason
    evictions: float = 0.0  # llmgw_lora_evictions_total
    load_waits: float = 0.0  # requests that waited for a load (llmgw_lora_load_wait_seconds)
    load_wait_s: float = 0.0  # ... their total wait
    load_s: float = 0.0  # time engines spent loading (llmgw_lora_load_duration_seconds)
    drift: float = 0.0  # llmgw_lora_residency_drift_total: belief corrected by a listing

    @property
    def loads(self) -> float:
        return self.demand_loads + self.preload_loads

    def __add__(self, other: LoraCounters) -> LoraCounters:
        return LoraCounters(*(a + b for a, b in zip(self._values(), other._values(),
                                                     strict=True)))

    def _values(self) -> tuple[float, ...]:
        return (self.demand_loads, self.preload_loads, self.failed_loads, self.evictions,
                self.load_waits, self.load_wait_s, self.load_s, self.drift)


def lora_counters(metrics_text: str) -> LoraCounters:
    """The counters of a gateway freshly started for one turn (so totals = the turn's)."""
    c = LoraCounters()
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            labels = s.labels
            if s.name == "llmgw_lora_loads_total":
                if labels.get("result") != "ok":
                    c.failed_loads += s.value
                elif labels.get("reason") == "preload":
                    c.preload_loads += s.value
                else:
                    c.demand_loads += s.value
            elif s.name == "llmgw_lora_evictions_total":
                c.evictions += s.value
            elif s.name == "llmgw_lora_load_wait_seconds_count":
                c.load_waits += s.value
            elif s.name == "llmgw_lora_load_wait_seconds_sum":
                c.load_wait_s += s.value
            elif s.name == "llmgw_lora_load_duration_seconds_sum":
                c.load_s += s.value
            elif s.name == "llmgw_lora_residency_drift_total":
                c.drift += s.value
    return c


@dataclass
class PolicyResult:
    """Every turn of one policy, added up."""

    policy: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    counters: LoraCounters = field(default_factory=LoraCounters)

    @property
    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def latency_ms(self, q: float) -> float:
        ok = [o.latency_s for o in self.outcomes if o.error is None]
        return percentile(ok, q) * 1e3 if ok else float("nan")

    def split(self) -> str:
        """Requests per replica, e.g. ``150/150``."""
        counts = Counter(o.replica for o in self.outcomes if o.error is None)
        return "/".join(str(counts[r]) for r in sorted(counts, key=str))


HEADER = ("| policy | requests | errors | loads: demand + preload = total | failed loads | "
          "evictions | requests that waited for a load (mean wait ms) | load ms (mean) | "
          "p50 ms | p99 ms | req/s | requests per replica |")


def table(results: list[PolicyResult]) -> str:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in results:
        c = r.counters
        lines.append(
            f"| {r.policy} | {len(r.outcomes)} | {len(r.errors)} | "
            f"{c.demand_loads:.0f} + {c.preload_loads:.0f} = {c.loads:.0f} | "
            f"{c.failed_loads:.0f} | {c.evictions:.0f} | "
            f"{c.load_waits:.0f} ({_mean_ms(c.load_wait_s, c.load_waits)}) | "
            f"{_mean_ms(c.load_s, c.loads + c.failed_loads)} | "
            f"{r.latency_ms(0.5):.1f} | {r.latency_ms(0.99):.1f} | "
            f"{len(r.outcomes) / r.wall_s if r.wall_s else 0:.1f} | {r.split()} |")
    return "\n".join(lines)


def _mean_ms(total_s: float, count: float) -> str:
    return f"{total_s / count * 1e3:.1f}" if count else "-"


def goals(aware: PolicyResult, baseline: PolicyResult, fewest: int) -> list[str]:
    """The ratios and whether each goal is met, one line each. ``fewest``: the loads an
    offline-optimal placement would need for the same requests (the best any routing
    could do), which bounds the ratio any policy can reach."""
    a, b = aware.counters, baseline.counters
    loads = b.loads / a.loads if a.loads else float("inf")
    demand = b.demand_loads / a.demand_loads if a.demand_loads else float("inf")
    best = b.loads / fewest if fewest else float("inf")
    p99 = aware.latency_ms(0.99) / baseline.latency_ms(0.99)
    p50 = aware.latency_ms(0.5) / baseline.latency_ms(0.5)
    return [
        f"loads {baseline.policy}/{aware.policy}: {loads:.2f}x (demand only: {demand:.2f}x); "
        f"goal >= {LOADS_GOAL:.0f}x: {'met' if loads >= LOADS_GOAL else 'NOT met'}",
        f"bound: offline-optimal eviction over all slots pooled needs {fewest} loads for "
        f"these requests, {best:.2f}x fewer than {baseline.policy}: no routing can do better",
        f"p99 {aware.policy}/{baseline.policy}: {p99:.2f} (p50: {p50:.2f}); "
        f"goal < 1: {'met' if p99 < 1 else 'NOT met'}",
    ]


def error_kinds(results: list[PolicyResult]) -> list[str]:
    """Failed requests grouped by policy and error text (request ids blanked)."""
    kinds = Counter((r.policy, re.sub(r"request_id=\w+", "request_id=...", o.error or ""))
                    for r in results for o in r.errors)
    return [f"{policy}: {count} x {text}" for (policy, text), count in kinds.most_common()]
