"""The retry budget of one model: retries (attempts after a request's first) at most
``min_retries + ratio x requests`` over the last ``window_s`` seconds (Finagle's and
Envoy's retry budgets). Without it, a fleet in trouble sees every request twice."""

from __future__ import annotations

import time
from collections.abc import Callable

from llmgw.config.resilience import RetryBudgetConfig


class RetryBudget:
    """Counts requests and retries in ``slots`` buckets of ``window_s / slots`` seconds,
    so memory is fixed whatever the traffic; the window slides a bucket at a time (it
    covers between ``window_s`` minus one bucket and ``window_s``). Event loop only;
    ``clock`` in seconds, monotonic."""

    def __init__(self, config: RetryBudgetConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, slots: int = 10,
                 on_denied: Callable[[], None] | None = None) -> None:
        self.config = config or RetryBudgetConfig()
        self._clock = clock
        # Called for each refused retry (the model's llmgw_retries_denied counter).
        self._on_denied = on_denied
        self._width = self.config.window_s / slots
        self._requests = [0] * slots
        self._retries = [0] * slots
        self._tick = int(clock() / self._width)

    def requested(self) -> None:
        """A request arrived (counted once, whatever its attempts)."""
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget has one; False means do not retry."""
        slot = self._slot()
        allowed = self.config.min_retries + self.config.ratio * sum(self._requests)
        if sum(self._retries) + 1 > allowed:
            if self._on_denied is not None:
                self._on_denied()
            return False
        self._retries[slot] += 1
        return True

    def _slot(self) -> int:
        tick, slots = int(self._clock() / self._width), len(self._requests)
        if tick != self._tick:  # clear the buckets that slid out of the window
            for old in range(max(self._tick + 1, tick - slots + 1), tick + 1):
                self._requests[old % slots] = self._retries[old % slots] = 0
            self._tick = tick
        return tick % slots
