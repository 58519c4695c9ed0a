"""Admission under overload: one model's requests past its replicas' capacity wait here,
in priority classes (interactive before batch) and, within a class, in weighted fair order
across tenants (keys).

- **Order**: start-time fair queueing. Each waiting request is tagged ``max(V, the
  tenant's previous tag) + 1 / weight``, where V is the tag of the last request let
  through; the smallest tag goes first. A tenant flooding the model queues behind its own
  earlier requests.
- **Shares**: while several tenants are active (a request within ``active_window_s``, or
  one in flight or waiting), each may hold at most its weighted share of the slots
  (``ceil(capacity x weight / active weights)``); alone, a tenant may use them all. So a
  flood never takes the slots a quieter tenant is using: its next request finds one free
  instead of waiting for the flood's requests to end. When a tenant's window passes with
  nothing of it in flight, a timer lets the others' held waiters into the slots it freed
  (no request may end or arrive for a long while).
- **Bounds**: past ``max_queued`` the worst waiter (lowest class, latest tag) is shed
  with 503; so is one waiting past ``timeout_s``.

Capacity is read per decision (routable replicas x per-replica limit); with no routable
replica nothing queues here (the dispatcher answers as it does without admission). One
event loop; not thread-safe.
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
# A tenant counts as active this long after its last request (seconds).
ACTIVE_WINDOW_S = 1.0
# Past a window's end before the timer looks again (loop time vs the injected clock).
_TIMER_SLACK_S = 0.001


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int
    tag: float
    seq: int
    tenant: str = field(compare=False)
    priority: str = field(compare=False)
    future: asyncio.Future[None] = field(compare=False)
    gone: bool = field(default=False, compare=False)  # let through, shed, timed out


@dataclass(slots=True)
class _Tenant:
    weight: float
    seen: float
    in_flight: int = 0
    queued: int = 0
    last_tag: float = 0.0


class FairQueue:
    def __init__(self, model: str, capacity: Callable[[], int], max_queued: int,
                 timeout_s: float, metrics: AdmissionMetrics,
                 clock: Callable[[], float] = time.perf_counter,
                 active_window_s: float = ACTIVE_WINDOW_S) -> None:
        """``clock``: seconds, on the event loop's time scale (monotonic)."""
        self.model, self.capacity = model, capacity
        self.active_window_s = active_window_s
        self.max_queued, self.timeout_s = max_queued, timeout_s
        self._metrics, self._clock = metrics, clock
        self.in_flight = 0
        self.queued = 0  # live waiters in the heap
        self._heap: list[_Waiter] = []
        self._tenants: dict[str, _Tenant] = {}
        self._virtual = 0.0
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None  # see _wake_when_shares_grow

    async def acquire(self, tenant: str, priority: str, weight: float) -> None:
        """Return once the request may go to a replica; then ``release(tenant)`` exactly
        once. ``tenant``: the key's name ("" without keys); ``weight`` > 0. Raises
        Saturated when shed or past the timeout; a cancelled caller leaves nothing."""
        now = self._clock()
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(weight, now)
        state.weight, state.seen = weight, now
        capacity = self._capacity()
        if not self.queued and self.in_flight < capacity \
                and state.in_flight < self._share(state, capacity, now):
            self._admit(state)
            return
        waiter = self._enqueue(tenant, state, priority)
        self._wake()  # it may fit now: free slots held back from over-share tenants
        try:
            async with asyncio.timeout(self.timeout_s):
                await waiter.future
        except BaseException as exc:
            self._abandon(waiter, state)
            if isinstance(exc, TimeoutError):
                self._metrics.shed(self.model, priority, "timeout")
                raise Saturated(f"model '{self.model}' is saturated: waited "
                                f"{self.timeout_s:g}s for a free replica") from None
            raise
        finally:
            self._metrics.waited(self.model, tenant, self._clock() - now)

    def release(self, tenant: str) -> None:
        self.in_flight -= 1
        state = self._tenants.get(tenant)
        if state is not None:
            state.in_flight -= 1
        self._wake()

    def poke(self) -> None:
        """Capacity may have grown (a replica joined): let waiters through."""
        self._wake()

    # --- internals --------------------------------------------------------------------

    def _capacity(self) -> float:
        capacity = self.capacity()
        return capacity if capacity > 0 else math.inf

    def _share(self, state: _Tenant, capacity: float, now: float) -> float:
        if math.isinf(capacity):
            return capacity
        active = [t for t in self._tenants.values()
                  if t.in_flight or t.queued or now - t.seen < self.active_window_s]
        total = sum(t.weight for t in active) or state.weight
        return max(1, math.ceil(capacity * state.weight / total))

    def _admit(self, state: _Tenant) -> None:
        self.in_flight += 1
        state.in_flight += 1

    def _enqueue(self, tenant: str, state: _Tenant, priority: str) -> _Waiter:
        tag = max(self._virtual, state.last_tag) + 1.0 / state.weight
        waiter = _Waiter(PRIORITY_RANK.get(priority, 0), tag, next(self._seq), tenant,
                         priority, asyncio.get_running_loop().create_future())
        if self.queued >= self.max_queued:
            for other in self._heap:  # callers cancelled this very step: leaving already
                if not other.gone and other.future.done():
                    self._drop(other)
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
        state.last_tag = tag
        state.queued += 1
        heapq.heappush(self._heap, waiter)
        self.queued += 1
        self._metrics.queued(self.model, self.queued)
        return waiter

    def _abandon(self, waiter: _Waiter, state: _Tenant) -> None:
        """The waiting caller stopped (timeout, cancellation, shed)."""
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            self.release(waiter.tenant)  # let through just as it gave up: pass it on
        elif not waiter.gone:
            self._drop(waiter)
        self._compact()

    def _compact(self) -> None:
        """Waiters that left stay in the heap until popped, which only happens as slots
        free: through a long saturation with callers giving up they would pile up (memory,
        and the full queue's scan for its worst). Rebuild once they outnumber the live."""
        if len(self._heap) > 2 * self.queued + 64:
            self._heap = [w for w in self._heap if not w.gone]
            heapq.heapify(self._heap)

    def _drop(self, waiter: _Waiter) -> None:
        waiter.gone = True
        self.queued -= 1
        state = self._tenants.get(waiter.tenant)
        if state is not None:
            state.queued -= 1
        self._metrics.queued(self.model, self.queued)

    def _wake(self) -> None:
        """Let through, best first, every waiter that fits its tenant's share."""
        capacity, now = self._capacity(), self._clock()
        held: list[_Waiter] = []  # over their tenant's share for now
        while self._heap and self.in_flight < capacity:
            waiter = heapq.heappop(self._heap)
            if waiter.gone:
                continue
            if waiter.future.done():  # its caller was cancelled and has not run yet
                self._drop(waiter)
                continue
            state = self._tenants[waiter.tenant]
            if state.in_flight >= self._share(state, capacity, now):
                held.append(waiter)
                continue
            self._drop(waiter)
            self._admit(state)
            self._virtual = waiter.tag
            waiter.future.set_result(None)
        for waiter in held:
            heapq.heappush(self._heap, waiter)
        if held:
            self._wake_when_shares_grow(held[0].future.get_loop(), now)
        self._forget_idle(now)
        self._metrics.queued(self.model, self.queued)

    def _wake_when_shares_grow(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """Waiters are held back for tenants active only by their recent requests. When
        the first such window ends, shares grow with no request ending or arriving to
        notice it: wake then."""
        if self._timer is not None:
            return
        ends = [t.seen + self.active_window_s for t in self._tenants.values()
                if not t.in_flight and not t.queued and now - t.seen < self.active_window_s]
        if ends:
            self._timer = loop.call_later(min(ends) - now + _TIMER_SLACK_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _forget_idle(self, now: float) -> None:
        if len(self._tenants) > 64 or not self._heap:
            self._tenants = {name: t for name, t in self._tenants.items()
                             if t.in_flight or t.queued or
                             now - t.seen < self.active_window_s}
