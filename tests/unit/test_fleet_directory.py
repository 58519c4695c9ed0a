"""The lease and member list several gateways share on Ray (the directory actor's logic,
run here as a plain object: Ray only hosts it)."""

from __future__ import annotations

import asyncio

import pytest

from llmgw.placement.ray_directory import LEASE_S, FleetDirectory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_one_owner_until_its_lease_runs_out(clock: Clock) -> None:
    directory = FleetDirectory(clock)
    assert await directory.claim("a", [{"id": "m-0"}])
    assert not await directory.claim("b")
    clock.now += LEASE_S - 1
    assert await directory.claim("a")  # renewed
    clock.now += LEASE_S - 1
    assert not await directory.claim("b")
    clock.now += 2  # a stopped renewing
    assert await directory.claim("b")
    assert directory.members == [{"id": "m-0"}]  # the new owner starts from what it knew


async def test_a_released_lease_is_taken_at_once(clock: Clock) -> None:
    directory = FleetDirectory(clock)
    assert await directory.claim("a")
    await directory.release("b")  # not the owner: nothing happens
    assert not await directory.claim("b")
    await directory.release("a")
    assert await directory.claim("b")


async def test_watchers_wake_on_a_change_of_members(clock: Clock) -> None:
    directory = FleetDirectory(clock)
    await directory.claim("a", [{"id": "m-0"}])
    generation, members, owner = await directory.watch(-1, 5)
    assert (members, owner) == ([{"id": "m-0"}], "a")
    waiting = asyncio.ensure_future(directory.watch(generation, 5))
    await asyncio.sleep(0)
    await directory.claim("a", [{"id": "m-0"}])  # the same list: no change, no wake-up
    await asyncio.sleep(0)
    assert not waiting.done()
    await directory.claim("a", [{"id": "m-0"}, {"id": "m-1"}])
    later, members, _ = await asyncio.wait_for(waiting, 1)
    assert later == generation + 1 and [m["id"] for m in members] == ["m-0", "m-1"]


async def test_a_watch_with_nothing_new_returns_after_its_wait(clock: Clock) -> None:
    directory = FleetDirectory(clock)
    await directory.claim("a", [])
    generation, _, _ = await directory.watch(-1, 1)
    assert (await directory.watch(generation, 0.01))[0] == generation
