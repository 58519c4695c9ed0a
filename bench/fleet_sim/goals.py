"""The fleet goals llmgw set itself, checked on the multi-turn chat workload.

For each of llmgw's cache-aware policies: a hit rate of at least 90% of the oracle's
(the load-bounded one), a TTFT p50 at least 2x lower than round robin's, a lower TTFT
p99 than sglang-router's cache_aware (each of its rows), and max/mean load under 1.3.
Pure: rows in, lines out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.fleet_sim.report import Row

WORKLOAD = "chat"
POLICIES = ("llmgw/prefix-aware", "llmgw/session-aware")
ORACLE = "oracle"
ROUND_ROBIN = "llmgw/round-robin"
SGLANG_PREFIX = "sglang-router/cache_aware"
MAX_LOAD_IMBALANCE = 1.3


@dataclass(frozen=True)
class Goal:
    """``met(policy's value, reference's value)``, the values read by ``metric`` from the
    reference row, or ``limit`` when there is no reference row; ``fmt`` shows a value."""

    text: str
    reference: str | None
    metric: Callable[[Row], float]
    met: Callable[[float, float], bool]
    fmt: str
    limit: float = 0.0


def _goals(sglang_rows: list[str]) -> list[Goal]:
    hit, p50, p99 = (lambda r: r.hit_rate), (lambda r: r.ttft_p50_ms), (lambda r: r.ttft_p99_ms)
    return [
        Goal(f"hit rate >= 90% of {ORACLE}'s", ORACLE, hit, lambda a, b: a >= 0.9 * b, "{:.1%}"),
        Goal(f"TTFT p50 >= 2x lower than {ROUND_ROBIN}'s", ROUND_ROBIN, p50,
             lambda a, b: 2 * a <= b, "{:.0f} ms"),
        *(Goal(f"TTFT p99 lower than {name}'s", name, p99, lambda a, b: a < b, "{:.0f} ms")
          for name in sglang_rows),
        Goal(f"max/mean load < {MAX_LOAD_IMBALANCE}", None, lambda r: r.load_imbalance,
             lambda a, b: a < b, "{:.2f}", limit=MAX_LOAD_IMBALANCE),
    ]


def _verdict(goal: Goal, row: Row | None, ref: Row | None) -> str:
    if row is None or (goal.reference is not None and ref is None):
        return "n/a (no row)"
    mine = goal.metric(row)
    other = goal.metric(ref) if ref is not None else goal.limit
    shown = f"{goal.fmt.format(mine)} vs {goal.fmt.format(other)}"
    return f"{shown} -> {'met' if goal.met(mine, other) else 'NOT met'}"


def check(rows: list[Row]) -> list[str]:
    """One line per policy and goal: ``goal  <policy> <goal> (chat): <numbers> -> met``,
    or ``n/a (no row)`` when a row it needs is missing or n/a."""
    # The goals are for one gateway; rows with several instances are compared elsewhere.
    chat = {r.target: r for r in rows
            if r.workload == WORKLOAD and not r.reason and r.instances == 1}
    sglang = sorted(n for n in chat if n.startswith(SGLANG_PREFIX)) or [SGLANG_PREFIX]
    lines = []
    for policy in POLICIES:
        for goal in _goals(sglang):
            ref = chat.get(goal.reference) if goal.reference else None
            lines.append(f"goal  {policy} {goal.text} ({WORKLOAD}): "
                         f"{_verdict(goal, chat.get(policy), ref)}")
    return lines
