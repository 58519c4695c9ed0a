"""Canary splits: weights honoured, a session never switches target, and a weight change
moves only the sessions in the band that changed hands."""

from __future__ import annotations

import random
from collections import Counter

from llmgw.routing.traffic_split import TrafficSplit


def split(*targets: tuple[str, float]) -> TrafficSplit:
    return TrafficSplit("demo", list(targets), random.Random(7))


def test_sessions_spread_by_weight_and_stick() -> None:
    canary = split(("v1", 90), ("v2", 10))
    picks = {f"session-{i}": canary.pick(f"session-{i}") for i in range(5000)}
    share = Counter(picks.values())["v2"] / len(picks)
    assert 0.085 < share < 0.115
    assert all(canary.pick(key) == target for key, target in picks.items())


def test_requests_without_a_session_spread_by_weight() -> None:
    canary = split(("v1", 3), ("v2", 1))
    share = Counter(canary.pick(None) for _ in range(4000))["v2"] / 4000
    assert 0.22 < share < 0.28


def test_a_weight_change_moves_only_the_band_that_changed_hands() -> None:
    before, after = split(("v1", 90), ("v2", 10)), split(("v1", 80), ("v2", 20))
    keys = [f"s{i}" for i in range(5000)]
    moved = [k for k in keys if before.pick(k) != after.pick(k)]
    assert all(before.pick(k) == "v1" and after.pick(k) == "v2" for k in moved)
    assert 0.08 < len(moved) / len(keys) < 0.12


def test_zero_weight_gets_nothing() -> None:
    canary = split(("v1", 1), ("v2", 0), ("v3", 1))
    assert "v2" not in {canary.pick(f"k{i}") for i in range(2000)}
    assert canary.weights() == {"v1": 0.5, "v2": 0.0, "v3": 0.5}
