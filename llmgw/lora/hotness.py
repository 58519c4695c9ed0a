"""Hotness control: from per-adapter request rates and the waits loads caused, pre-load
hot adapters on more replicas before requests queue behind a load there.

An adapter is hot when its rate reaches ``hot_rate`` requests/s, or when requests keep
waiting for it to load (its load waits, decayed over the window, reach 3). A hot adapter
should be resident on ``1 + rate // hot_rate`` replicas, one more while requests keep
waiting for its loads (at most all). Pre-loads go to a
replica with a free slot first, else one whose coldest idle adapter is less than half as
hot (never evicting something about as hot to make room).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmgw.lora.catalog import Adapter
from llmgw.lora.rates import AdapterRates

log = logging.getLogger("llmgw.lora")
_WAITS_MAKE_HOT = 3.0


@dataclass(frozen=True, slots=True)
class Preload:
    adapter: Adapter
    replica_id: str


def plan_preloads(adapters: Sequence[Adapter], replicas: Sequence[str],
                  resident: Callable[[str], frozenset[str]], slots: int,
                  rates: AdapterRates, hot_rate: float,
                  now: float | None = None) -> list[Preload]:
    """At most one pre-load per replica per round, hottest adapters first."""
    now = time.monotonic() if now is None else now
    rate = {a.name: rates.rate(a.name, now) for a in adapters}
    waiting = {a.name for a in adapters if rates.recent_waits(a.name, now) >= _WAITS_MAKE_HOT}
    hot = sorted((a for a in adapters if rate[a.name] >= hot_rate or a.name in waiting),
                 key=lambda a: -rate[a.name])
    busy: set[str] = set()
    plan: list[Preload] = []
    for adapter in hot:
        # Requests kept waiting for its loads: one more replica than its rate alone asks.
        want = min(len(replicas), 1 + int(rate[adapter.name] // hot_rate)
                   + (adapter.name in waiting))
        holders = [r for r in replicas if adapter.name in resident(r)]
        for _ in range(want - len(holders)):
            target = _target(adapter, replicas, holders, busy, resident, slots, rate)
            if target is None:
                break
            plan.append(Preload(adapter, target))
            busy.add(target)
            holders.append(target)
    return plan


def _target(adapter: Adapter, replicas: Sequence[str], holders: list[str], busy: set[str],
            resident: Callable[[str], frozenset[str]], slots: int,
            rate: dict[str, float]) -> str | None:
    candidates = [r for r in replicas if r not in holders and r not in busy]
    free = [r for r in candidates if len(resident(r)) < slots]
    if free:
        return min(free, key=lambda r: len(resident(r)))
    mine = rate[adapter.name]
    colder = [(min(rate.get(n, 0.0) for n in resident(r)), r) for r in candidates if resident(r)]
    colder = [(cold, r) for cold, r in colder if cold < mine / 2]
    return min(colder)[1] if colder else None
