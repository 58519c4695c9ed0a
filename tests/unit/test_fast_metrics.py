"""The request path's direct metric updates expose exactly what prometheus-client's own
methods do, for counters, gauges and histograms (bucket edges included)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from llmgw.metrics.fast import adder, observer

AMOUNTS = [0.0, 0.05, 0.1, 0.5, 1, 1.0000001, 5, 7, 1e9]


def _exposition(fast: bool) -> list[str]:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["m"], registry=registry).labels("x")
    gauge = Gauge("g", "g", ["m"], registry=registry).labels("x")
    histogram = Histogram("h", "h", ["m"], buckets=(0.1, 1, 5), registry=registry).labels("x")
    if fast:
        count, move, observe = adder(counter), adder(gauge), observer(histogram)
        for amount in AMOUNTS:
            count(2)
            move(3)
            move(-1)
            observe(amount)
    else:
        for amount in AMOUNTS:
            counter.inc(2)
            gauge.inc(3)
            gauge.dec(1)
            histogram.observe(amount)
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_direct_updates_expose_what_the_methods_do() -> None:
    assert _exposition(fast=True) == _exposition(fast=False)


def test_a_family_without_labels_chosen_is_refused_at_once() -> None:
    family = Counter("c", "c", ["m"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        adder(family)
