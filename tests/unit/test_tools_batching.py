"""The batch queue behind ``@llmgw.batch`` (Ray Serve's ``@serve.batch`` semantics): batch
sizes, the wait bound, errors failing their whole batch, bounds changed at run time."""

from __future__ import annotations

import asyncio

import pytest

import llmgw
from llmgw.tools.batching import BatchSizeMismatch


class Squares:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @llmgw.batch(max_batch_size=3, batch_wait_timeout_s=30)
    async def square(self, n: list[int]) -> list[int]:
        self.batches.append(n)
        if -1 in n:
            raise ValueError("negative")
        return [i * i for i in n] if -2 not in n else []

    @llmgw.batch(max_batch_size=2, batch_wait_timeout_s=0)
    def double(self, n: list[int]) -> list[int]:  # sync: runs in a thread
        self.batches.append(n)
        return [2 * i for i in n]


async def test_size_bound_then_wait_bound() -> None:
    squares = Squares()
    full = await asyncio.gather(*(squares.square(i) for i in range(3)))
    assert (full, squares.batches) == ([0, 1, 4], [[0, 1, 2]])
    squares.square.set_batch_wait_timeout_s(0)  # from the next batch on
    assert await squares.square(5) == 25
    assert squares.batches == [[0, 1, 2], [5]]


async def test_an_error_fails_every_call_of_its_batch() -> None:
    squares = Squares()
    outcomes = await asyncio.gather(*(squares.square(i) for i in (1, -1, 2)),
                                    return_exceptions=True)
    assert [type(o) for o in outcomes] == [ValueError] * 3
    assert await asyncio.gather(*(squares.square(i) for i in (3, 4, 5))) == [9, 16, 25]


async def test_a_result_list_of_another_length_fails_the_batch() -> None:
    squares = Squares()
    outcomes = await asyncio.gather(*(squares.square(i) for i in (1, -2, 2)),
                                    return_exceptions=True)
    assert all(isinstance(o, BatchSizeMismatch) for o in outcomes)
    assert str(outcomes[0]) == ("batched method Squares.square returned 0 results for a "
                                "batch of 3 calls (it must return a list of the same length)")


async def test_sync_batched_methods_and_runtime_size() -> None:
    squares = Squares()
    assert await asyncio.gather(*(squares.double(i) for i in range(4))) == [0, 2, 4, 6]
    assert squares.batches == [[0, 1], [2, 3]]
    squares.double.set_max_batch_size(4)
    squares.batches.clear()
    assert await asyncio.gather(*(squares.double(i) for i in range(4))) == [0, 2, 4, 6]
    assert squares.batches == [[0, 1, 2, 3]]


async def test_each_instance_has_its_own_queue() -> None:
    a, b = Squares(), Squares()
    a.square.set_batch_wait_timeout_s(0)
    b.square.set_batch_wait_timeout_s(0)
    assert await asyncio.gather(a.square(1), b.square(2)) == [1, 4]
    assert (a.batches, b.batches) == ([[1]], [[2]])


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        Squares().square.set_max_batch_size(0)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        llmgw.batch(max_batch_size=0)
