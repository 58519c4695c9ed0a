"""The retry budget over an injected clock: a share of requests plus a reserve, over a
sliding window."""

from __future__ import annotations

from llmgw.config import RetryBudgetConfig
from llmgw.resilience.budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend(budget: RetryBudget, tries: int) -> list[bool]:
    return [budget.try_retry() for _ in range(tries)]


def test_retries_are_a_share_of_requests_plus_the_reserve() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_retries=2, window_s=10), Clock())
    for _ in range(20):
        budget.requested()
    # 2 + 0.2 x 20 = 6
    assert spend(budget, 7) == [True] * 6 + [False]


def test_low_traffic_still_retries_within_the_reserve() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_retries=3, window_s=10), Clock())
    budget.requested()
    assert spend(budget, 4) == [True, True, True, False]


def test_the_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.5, min_retries=0, window_s=10), clock)
    for _ in range(4):
        budget.requested()
    assert spend(budget, 3) == [True, True, False]
    clock.now += 5  # half a window on: the same requests and retries still count
    assert budget.try_retry() is False
    budget.requested()
    budget.requested()
    assert spend(budget, 2) == [True, False]  # 0.5 x 6 = 3 retries
    clock.now += 5.5  # the first requests and retries slid out; two requests remain
    assert spend(budget, 2) == [False, False]  # one retry of the 0.5 x 2 left: spent
    clock.now += 60  # everything slid out
    assert budget.try_retry() is False
    for _ in range(2):
        budget.requested()
    assert spend(budget, 2) == [True, False]


def test_no_ratio_and_no_reserve_means_no_retries() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0, min_retries=0), Clock())
    budget.requested()
    assert budget.try_retry() is False
