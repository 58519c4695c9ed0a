"""Admission under overload: one model's requests past its replicas' capacity wait here,
in priority classes (interactive before batch) and, within a class, in weighted fair order
across tenants (keys).

Fair order is start-time fair queueing: each waiting request is tagged ``max(V, the
tenant's previous tag) + 1 / weight``, where V is the tag of the last request let through,
and the smallest tag goes first. A tenant flooding the model queues behind its own earlier
requests, so another tenant's request waits about one slot, not the flood's backlog.
The queue is bounded: past ``max_queued`` the worst waiter (lowest class, latest tag) is
shed with 503. Capacity is read per decision (routable replicas x per-replica limit); with
no routable replica nothing queues here (the dispatcher answers as it does without
admission). One event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmgw.errors import Saturated
from llmgw.metrics import AdmissionMetrics

PRIORITY_RANK = {"interactive": 0, "batch": 1}


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int
    tag: float
    seq: int
    tenant: str = field(compare=False)
    priority: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)
    gone: bool = field(default=False, compare=False)  # shed, timed out or cancelled


class FairQueue:
    def __init__(self, model: str, capacity: Callable[[], int], max_queued: int,
                 timeout_s: float, metrics: AdmissionMetrics,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.model, self.capacity = model, capacity
        self.max_queued, self.timeout_s = max_queued, timeout_s
        self._metrics, self._clock = metrics, clock
        self.in_flight = 0
        self.queued = 0  # live waiters in the heap
        self._heap: list[_Waiter] = []
        self._last_tag: dict[str, float] = {}
        self._virtual = 0.0
        self._seq = itertools.count()

    def _limit(self) -> float:
        capacity = self.capacity()
        return capacity if capacity > 0 else math.inf

    async def acquire(self, tenant: str, priority: str, weight: float) -> None:
        # ``tenant``: the key's name ("" without keys); ``weight``: its share, > 0.
        """Return once the request may go to a replica (then ``release`` it exactly once);
        raises Saturated when shed or past the timeout. A cancelled caller leaves nothing
        behind."""
        if not self.queued and self.in_flight < self._limit():
            self.in_flight += 1
            return
        waiter = self._enqueue(tenant, priority, weight)
        started = self._clock()
        try:
            async with asyncio.timeout(self.timeout_s):
                await waiter.future
        except BaseException as exc:
            if waiter.future.done() and not waiter.future.cancelled() \
                    and waiter.future.exception() is None:
                self.release()  # let through just as it gave up: hand the slot on
            elif not waiter.gone:
                self._drop(waiter)
            if isinstance(exc, TimeoutError):
                self._metrics.shed(self.model, priority, "timeout")
                raise Saturated(f"model '{self.model}' is saturated: waited "
                                f"{self.timeout_s:g}s for a free replica") from None
            raise
        finally:
            self._metrics.waited(self.model, tenant, self._clock() - started)

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def poke(self) -> None:
        """Capacity may have grown (a replica joined): let waiters through."""
        self._wake()

    def _enqueue(self, tenant: str, priority: str, weight: float) -> _Waiter:
        tag = max(self._virtual, self._last_tag.get(tenant, 0.0)) + 1.0 / weight
        waiter = _Waiter(PRIORITY_RANK.get(priority, 0), tag, next(self._seq), tenant,
                         priority, asyncio.get_running_loop().create_future())
        if self.queued >= self.max_queued:
            worst = max((w for w in self._heap if not w.gone), default=None)
            if worst is None or worst < waiter:
                self._metrics.shed(self.model, priority, "queue_full")
                raise Saturated(f"model '{self.model}' is saturated: {self.max_queued} "
                                "requests are waiting already")
            self._drop(worst)
            self._metrics.shed(self.model, worst.priority, "queue_full")
            worst.future.set_exception(Saturated(
                f"model '{self.model}' is saturated: shed for a higher-priority request"))
        self._last_tag[tenant] = tag
        heapq.heappush(self._heap, waiter)
        self.queued += 1
        self._metrics.queued(self.model, self.queued)
        return waiter

    def _drop(self, waiter: _Waiter) -> None:
        waiter.gone = True
        self.queued -= 1
        self._metrics.queued(self.model, self.queued)

    def _wake(self) -> None:
        limit = self._limit()
        while self._heap and self.in_flight < limit:
            waiter = heapq.heappop(self._heap)
            if waiter.gone:
                continue
            waiter.gone = True
            if waiter.future.done():  # its caller was cancelled and has not run yet
                self.queued -= 1
                continue
            self.queued -= 1
            self.in_flight += 1
            self._virtual = waiter.tag
            waiter.future.set_result(None)
        if not self._heap:
            self._last_tag.clear()  # nobody waits: no tenant carries a debt forward
        self._metrics.queued(self.model, self.queued)
