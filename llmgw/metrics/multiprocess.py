"""One exposition over several processes (``server.workers`` above 1): prometheus-client's
multiprocess mode. Every process of one `llmgw up` (the supervisor and each worker)
writes its samples to memory-mapped files in one directory; ``/metrics`` on any worker
reads them all: counters and histograms summed, each gauge by the mode its definition
names (``livesum`` for what is counted per process, such as in-flight requests;
``livemax`` / ``livemostrecent`` for what every process sees alike, such as health or an
engine's own numbers). A single-process gateway never turns this on and pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest, multiprocess, values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# prometheus-client's own switch; every process that inherits it writes its files there.
DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _Process:
    """This process's id, kept: prometheus-client asks for it on every update of a
    multiprocess value (to notice a fork), and os.getpid() is a system call each time
    (~0.3 us of the ~0.7 us an update costs; a request makes about ten). An attribute,
    so that the request path's updates (llmgw.metrics.fast) read it without a call."""

    __slots__ = ("id",)

    def __init__(self) -> None:
        self.id = os.getpid()


this_process = _Process()


def process_id() -> int:
    """``os.getpid()``, kept (updated in a forked child)."""
    return this_process.id


def _forked() -> None:
    this_process.id = os.getpid()


os.register_at_fork(after_in_child=_forked)


def enable(directory: str) -> None:
    """This process and the processes it starts from now on share ``directory``. Metrics
    made before the call stay private to the process (make none before it). A process
    that inherited the directory (a worker) calls it too, before making any metric, so
    that its values know its id without a system call per update."""
    os.environ[DIR_ENV] = directory
    # prometheus-client picks the value class when it is imported; metrics read it when
    # they make each series, so setting it here takes effect for every later series.
    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=process_id
    )


def shared_dir() -> str | None:
    return os.environ.get(DIR_ENV) or None


def exposition(directory: str, keep: Callable[[dict[str, str]], bool] | None = None) -> bytes:
    """Every process's samples, merged; ``keep``: which samples (by their labels) to show
    (the files keep every series any process ever made, a departed replica's too)."""
    merged = multiprocess.MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    registry.register(merged if keep is None else _Kept(merged, keep))
    return generate_latest(registry)


class _Kept(Collector):
    """Another collector's metrics with only the samples ``keep`` accepts."""

    def __init__(self, inner: Collector, keep: Callable[[dict[str, str]], bool]) -> None:
        self._inner, self._keep = inner, keep

    def collect(self) -> Iterable[Metric]:
        for metric in self._inner.collect():
            metric.samples = [s for s in metric.samples if self._keep(s.labels)]
            yield metric


def process_gone(directory: str, pid: int) -> None:
    """A process of the group exited: its live gauges leave the merge (its counters stay
    in the sums, so they never go backwards)."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
