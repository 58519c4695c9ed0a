"""The request path's direct metric updates expose exactly what prometheus-client's own
methods do, for counters, gauges and histograms (bucket edges included), in one process
(lock-free floats) and with multiprocess files (the values' own ``inc``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from llmgw.metrics.fast import adder, observer

AMOUNTS = [0.0, 0.05, 0.1, 0.5, 1, 1.0000001, 5, 7, 1e9]


def _exposition(fast: bool, files: Path | None = None) -> list[str]:
    """The samples after the same updates, through the fast callables or the methods;
    ``files``: values in multiprocess files there, exposed by the multiprocess
    collector."""
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
    if files is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(files))  # type: ignore[no-untyped-call]
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_direct_updates_expose_what_the_methods_do() -> None:
    assert _exposition(fast=True) == _exposition(fast=False)


def test_with_multiprocess_files_the_updates_reach_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What llmgw.metrics.multiprocess sets up for workers: every value an mmap'd file.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    fast_files, method_files = tmp_path / "fast", tmp_path / "methods"
    fast_files.mkdir()
    method_files.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(fast_files))
    fast = _exposition(fast=True, files=fast_files)
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(method_files))
    assert fast == _exposition(fast=False, files=method_files)
    assert any(line.startswith("c_total") and line.endswith(" 18.0") for line in fast)


def test_a_family_without_labels_chosen_is_refused_at_once() -> None:
    family = Counter("c", "c", ["m"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        adder(family)
