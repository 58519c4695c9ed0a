"""Per-adapter request rates (exponentially decayed), what hotness control and eviction
act on: hot adapters get more replicas, cold ones leave first."""

from __future__ import annotations

import math


class AdapterRates:
    """Requests/s per adapter as a moving average over about ``window_s``; also counts the
    requests that had to wait for a load, over the same window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._rates: dict[str, tuple[float, float]] = {}  # name -> (rate, at)
        self._waits: dict[str, tuple[float, float]] = {}

    def _decayed(self, table: dict[str, tuple[float, float]], name: str, now: float) -> float:
        value, at = table.get(name, (0.0, now))
        return value * math.exp(-(now - at) / self.window_s)

    def observe(self, name: str, now: float) -> None:
        self._rates[name] = (self._decayed(self._rates, name, now) + 1 / self.window_s, now)

    def waited(self, name: str, now: float) -> None:
        self._waits[name] = (self._decayed(self._waits, name, now) + 1, now)

    def rate(self, name: str, now: float) -> float:
        return self._decayed(self._rates, name, now)

    def recent_waits(self, name: str, now: float) -> float:
        return self._decayed(self._waits, name, now)

    def names(self) -> list[str]:
        return list(self._rates)

    def forget(self, name: str) -> None:
        self._rates.pop(name, None)
        self._waits.pop(name, None)
