"""The admission queue of a saturated model: priority classes, weighted fair order across
tenants, bounded size with shedding, timeouts and cancellation. Each ``await turn()``
yields one event-loop iteration (no timed sleeps): waiting tasks take their next step."""

from __future__ import annotations

import asyncio

import pytest

from llmgw.admission import FairQueue
from llmgw.errors import Saturated
from llmgw.metrics import AdmissionMetrics, Metrics


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def queue(capacity: int = 1, max_queued: int = 100, timeout_s: float = 60,
          clock: Clock | None = None, active_window_s: float = 1.0) -> FairQueue:
    return FairQueue("m", lambda: capacity, max_queued, timeout_s,
                     AdmissionMetrics(Metrics()), clock or Clock(), active_window_s)


class Recorder:
    """Starts requests that acquire a slot and record who got through, in order."""

    def __init__(self, q: FairQueue) -> None:
        self.q, self.order, self.tasks = q, list[str](), list[asyncio.Task[None]]()
        self.tenants: dict[str, str] = {}

    def start(self, name: str, tenant: str, priority: str = "interactive",
              weight: float = 1.0) -> asyncio.Task[None]:
        self.tenants[name] = tenant

        async def run() -> None:
            await self.q.acquire(tenant, priority, weight)
            self.order.append(name)

        task = asyncio.create_task(run())
        self.tasks.append(task)
        return task

    async def drain(self) -> list[str]:
        """Release one slot per request let through until nobody waits."""
        await turn()
        released = 0
        while released < len(self.order):
            self.q.release(self.tenants[self.order[released]])
            released += 1
            await turn()
        return self.order


async def test_under_capacity_nothing_waits_and_no_replica_means_no_queue() -> None:
    q = queue(capacity=2)
    await q.acquire("a", "interactive", 1)
    await q.acquire("a", "batch", 1)
    assert (q.in_flight, q.queued) == (2, 0)
    empty = queue(capacity=0)  # the dispatcher answers (503, or scale from zero)
    await empty.acquire("a", "interactive", 1)
    assert empty.in_flight == 1


async def test_interactive_goes_before_batch() -> None:
    q = queue()
    await q.acquire("hold", "interactive", 1)
    r = Recorder(q)
    r.start("b1", "x", "batch"), r.start("b2", "y", "batch"), r.start("i1", "z")
    await turn()
    q.release("hold")
    assert await r.drain() == ["i1", "b1", "b2"]


async def test_a_flooding_tenant_waits_behind_its_own_backlog() -> None:
    q = queue()
    await q.acquire("hold", "interactive", 1)
    r = Recorder(q)
    for i in range(6):
        r.start(f"flood{i}", "flood")
    await turn()
    r.start("quiet", "quiet")
    await turn()
    q.release("hold")
    assert await r.drain() == ["flood0", "quiet", "flood1", "flood2", "flood3", "flood4",
                               "flood5"]


async def test_weights_share_turns() -> None:
    q = queue()
    await q.acquire("hold", "interactive", 1)
    r = Recorder(q)
    for i in range(4):
        r.start(f"a{i}", "a", weight=2)
        r.start(f"b{i}", "b", weight=1)
    await turn()
    q.release("hold")
    # tags a: .5 1 1.5 2, b: 1 2 3 4; ties go to the earlier arrival
    assert (await r.drain())[:6] == ["a0", "b0", "a1", "a2", "b1", "a3"]


async def test_a_full_queue_sheds_the_worst_waiter() -> None:
    q = queue(max_queued=2)
    await q.acquire("hold", "interactive", 1)
    r = Recorder(q)
    batch = [r.start("b1", "x", "batch"), r.start("b2", "x", "batch")]
    await turn()
    r.start("i1", "y")  # full: the latest batch waiter makes room
    await turn()
    assert batch[1].done() and isinstance(batch[1].exception(), Saturated)
    r.start("i2", "y")  # full again: the batch one left goes
    await turn()
    assert isinstance(batch[0].exception(), Saturated)
    late = r.start("b3", "z", "batch")  # full of interactive: a batch arrival is refused
    await turn()
    assert isinstance(late.exception(), Saturated) and q.queued == 2
    assert Saturated("m").status_code == 503 and Saturated("m").headers() == \
        {"retry-after": "1"}
    q.release("hold")
    assert await r.drain() == ["i1", "i2"]


async def test_timeouts_and_cancelled_callers_leave_nothing_behind() -> None:
    q = queue(timeout_s=0.01)
    await q.acquire("hold", "interactive", 1)
    with pytest.raises(Saturated, match="waited"):
        await q.acquire("a", "interactive", 1)
    r = Recorder(q)
    gone = r.start("gone", "a")
    r.start("stays", "b")
    await turn()
    gone.cancel()
    await turn()
    assert q.queued == 1
    q.release("hold")
    assert await r.drain() == ["stays"]
    assert (q.in_flight, q.queued) == (0, 0)


async def test_a_replica_joining_lets_waiters_through() -> None:
    capacity = [1]
    q = FairQueue("m", lambda: capacity[0], 10, 60, AdmissionMetrics(Metrics()), Clock())
    await q.acquire("hold", "interactive", 1)
    r = Recorder(q)
    r.start("w", "a")
    await turn()
    capacity[0] = 2
    q.poke()
    await turn()
    assert r.order == ["w"] and q.in_flight == 2


async def test_a_flood_holds_only_its_share_while_another_tenant_is_active() -> None:
    clock = Clock()
    q = queue(capacity=4, clock=clock)
    await q.acquire("quiet", "interactive", 1)
    r = Recorder(q)
    for i in range(6):
        r.start(f"flood{i}", "flood")
    await turn()
    assert (r.order, q.in_flight, q.queued) == (["flood0", "flood1"], 3, 4)  # share: 2 of 4
    await q.acquire("quiet", "interactive", 1)  # a slot is free for it at once
    assert (q.in_flight, q.queued) == (4, 4)
    clock.now = 5.0  # quiet leaves: its slots go to the flood as they free up
    q.release("quiet")
    q.release("quiet")
    await turn()
    assert r.order == ["flood0", "flood1", "flood2", "flood3"] and q.in_flight == 4


async def test_a_share_grows_back_when_the_other_tenant_goes_quiet_without_any_event() -> None:
    # A long request holds the only slot its share allows while another tenant counts as
    # active; once that tenant's window passes, the waiter takes the free slot even though
    # no request ended or arrived meanwhile (it would otherwise wait for the long one).
    clock = Clock()
    q = queue(capacity=2, clock=clock, active_window_s=0.05)
    await q.acquire("quiet", "interactive", 1)
    q.release("quiet")  # done, but active for the window
    await q.acquire("long", "interactive", 1)
    r = Recorder(q)
    waiting = r.start("next", "long")
    await turn()
    assert (r.order, q.in_flight, q.queued) == ([], 1, 1)  # held at its share: 1 of 2
    clock.now = 1.0  # the window has passed; a timer (in loop time) finds it
    await asyncio.wait_for(waiting, 5)
    assert (r.order, q.in_flight, q.queued) == (["next"], 2, 0)


async def test_a_full_queue_steps_over_a_waiter_cancelled_in_the_same_tick() -> None:
    # The cancelled caller's future is done at once, its handler runs a step later; a
    # request arriving in between finds it still queued and takes its place, no error.
    q = queue(max_queued=1)
    await q.acquire("hold", "interactive", 1)
    r = Recorder(q)
    gone = r.start("gone", "a")  # as good as the arriving one: would refuse it
    await turn()
    arriving = r.start("next", "b")  # its first step runs before gone's handler
    gone.cancel()
    await turn()
    assert gone.cancelled() and not arriving.done() and q.queued == 1
    q.release("hold")
    assert await r.drain() == ["next"]
    assert (q.in_flight, q.queued) == (0, 0)


async def test_callers_giving_up_during_a_long_saturation_do_not_pile_up() -> None:
    q = queue(max_queued=1000)
    await q.acquire("hold", "interactive", 1)
    r = Recorder(q)
    r.start("stays", "a")
    for round_ in range(10):
        leaving = [r.start(f"gone{round_}.{i}", "b") for i in range(50)]
        await turn()
        for task in leaving:
            task.cancel()
        await turn()
    assert q.queued == 1 and len(q._heap) <= 2 * q.queued + 64
    q.release("hold")
    assert await r.drain() == ["stays"]
