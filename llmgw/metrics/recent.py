"""Recent request and error rates per model, for ``GET /admin/status`` and ``llmgw
status``: read from the request counters (``llmgw_requests_total``,
``llmgw_request_errors_total``) as differences between samples of their totals, so the
request path pays nothing for them."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmgw.metrics.registry import Metrics


@dataclass(slots=True)
class _Totals:
    requests: float = 0.0
    client_errors: float = 0.0  # answered 4xx
    server_errors: float = 0.0  # answered 5xx
    by_code: dict[str, float] = field(default_factory=dict)


class RecentRates:
    """Samples of the counters' totals at most every ``every_s``; rates are the totals now
    minus those of the newest sample at least ``window_s`` old, over the time between
    (a window of ``window_s`` to ``window_s + every_s``). Until the gateway is that old,
    the window starts at creation, with every total 0 (the counters start with the
    gateway)."""

    def __init__(self, metrics: Metrics, window_s: float = 60.0, every_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics, self.window_s, self._every_s, self._clock = (
            metrics, window_s, every_s, clock)
        self._samples: deque[tuple[float, dict[str, _Totals]]] = deque([(clock(), {})])

    def sample(self) -> None:
        """Take a sample if the last is ``every_s`` old; cheap to call on every tick."""
        now = self._clock()
        if now - self._samples[-1][0] < self._every_s:
            return
        self._samples.append((now, self._totals()))
        # Keep one sample at least window_s old: the base of the next rates.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def rates(self) -> dict[str, Any]:
        """Per model (``unknown``: names no model serves): requests/s, 4xx/s and 5xx/s,
        the 5xx share, errors/s by error code; and the window they cover."""
        now = self._clock()
        newest = self._totals()
        # The newest sample at least window_s old (else the first: since the start).
        base_at, base = self._samples[0]
        for at, kept in self._samples:
            if at > now - self.window_s:
                break
            base_at, base = at, kept
        seconds = max(now - base_at, 1e-9)
        models = {}
        for model, totals in sorted(newest.items()):
            old = base.get(model, _Totals())
            requests = totals.requests - old.requests
            server = totals.server_errors - old.server_errors
            models[model] = {
                "requests_per_s": _per_s(requests, seconds),
                "client_errors_per_s": _per_s(totals.client_errors - old.client_errors,
                                              seconds),
                "server_errors_per_s": _per_s(server, seconds),
                "server_error_ratio": round(server / requests, 4) if requests > 0 else 0.0,
                "errors_by_code": {code: _per_s(count - old.by_code.get(code, 0.0), seconds)
                                   for code, count in sorted(totals.by_code.items())
                                   if count > old.by_code.get(code, 0.0)},
            }
        return {"window_s": round(seconds, 1), "models": models}

    def _totals(self) -> dict[str, _Totals]:
        out: dict[str, _Totals] = {}
        for family in self._metrics.requests.collect():
            for s in family.samples:
                if not s.name.endswith("_total"):
                    continue
                totals = out.setdefault(s.labels["model"], _Totals())
                totals.requests += s.value
                status = s.labels["status"]
                if status.startswith("4"):
                    totals.client_errors += s.value
                elif status.startswith("5"):
                    totals.server_errors += s.value
        for family in self._metrics.request_errors.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    totals = out.setdefault(s.labels["model"], _Totals())
                    code = s.labels["code"]
                    totals.by_code[code] = totals.by_code.get(code, 0.0) + s.value
        return out


def _per_s(count: float, seconds: float) -> float:
    return round(count / seconds, 4)
