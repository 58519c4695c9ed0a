"""Multiprocess metrics (``server.workers`` above 1): updates reach the shared files
without a system call each, and a worker can take the value class over safely."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, values

from llmgw.metrics import Metrics, ModelMetrics, ReplicaMetrics, multiprocess
from llmgw.metrics.fast import adder


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Multiprocess metrics in ``tmp_path``, as a worker has them; the value class and
    the variable are restored afterwards (enable() sets both: the originals are noted
    first)."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv(multiprocess.DIR_ENV, str(tmp_path))
    multiprocess.enable(str(tmp_path))
    return tmp_path


def test_updates_reach_the_files_under_the_kept_process_id(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The id is read once (and again after a fork), not asked of the kernel per update:
    # a kept id that differs from the real one shows which of the two the files use.
    monkeypatch.setattr(multiprocess.this_process, "id", 4242)
    counter = Counter("llmgw_t", "t", ["m"], registry=CollectorRegistry()).labels("x")
    for _ in range(10):
        counter.inc()
    assert [p.name for p in shared.iterdir()] == ["counter_4242.db"]
    assert 'llmgw_t_total{m="x"} 10.0' in multiprocess.exposition(str(shared)).decode()


def test_a_worker_makes_no_metric_before_it_takes_the_value_class_over(tmp_path: Path) -> None:
    # A worker inherits the directory, so prometheus-client picks its own multiprocess
    # value class on import; the worker replaces it before building the gateway. That is
    # safe only if importing the worker made no series yet (two value classes would
    # write one file through two position tables).
    env = {**os.environ, multiprocess.DIR_ENV: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", "import llmgw.workers.worker, llmgw.build, llmgw.api.app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_after_a_fork_the_request_path_updates_go_to_the_child_s_own_file(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(multiprocess.this_process, "id", 4242)
    counter = Counter("llmgw_t", "t", ["m"], registry=CollectorRegistry()).labels("x")
    add = adder(counter)  # writes the file directly, in the process that made it
    add(2)
    monkeypatch.setattr(multiprocess.this_process, "id", 4343)  # what the fork hook does in a child
    add(3)
    assert sorted(p.name for p in shared.iterdir()) == ["counter_4242.db", "counter_4343.db"]
    assert 'llmgw_t_total{m="x"} 5.0' in multiprocess.exposition(str(shared)).decode()


def test_a_departed_replica_leaves_the_exposition_though_the_files_keep_it(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics()
    for rid in ("m-0", "m-1"):
        ReplicaMetrics(metrics, "m", rid, "round-robin").add_routed(1)
    ModelMetrics(metrics, "m").count_request("chat", 200)

    def replicas(exposition: bytes) -> set[str]:
        return {m.group(1) for m in re.finditer(rb'replica="([^"]+)"', exposition)}

    assert replicas(metrics.exposition()) == {b"m-0", b"m-1"}
    metrics.forget_replica("m", "m-1")  # it left the fleet: its values stay in the files
    shown = metrics.exposition()
    assert replicas(shown) == {b"m-0"}
    assert b'llmgw_requests_total{endpoint="chat",model="m",status="200"} 1.0' in shown
    # A worker started after m-1 left never knew it: the files still hold its series.
    restarted = Metrics()
    ReplicaMetrics(restarted, "m", "m-0", "round-robin")
    assert replicas(restarted.exposition()) == {b"m-0"}
    assert b'replica="m-1"' in multiprocess.exposition(str(shared))


def test_updates_stay_right_when_the_file_grows_under_them(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request path writes a value in place in the file's mapping; when new series
    # outgrow the file, it is mapped anew, and the next update must still land on its
    # own value, every other value intact.
    family = Counter("llmgw_t", "t", ["m"], registry=CollectorRegistry())
    add = adder(family.labels("first"))
    add(2)
    add(3)
    files = list(shared.iterdir())
    size = files[0].stat().st_size
    for n in range(2000):  # each a new value in the same file: it grows (64 KiB at first)
        family.labels(f"series-{n:04d}-{'x' * 40}").inc(n)
    assert files[0].stat().st_size > size
    add(4)
    add(5)
    exposed = multiprocess.exposition(str(shared)).decode()
    assert 'llmgw_t_total{m="first"} 14.0' in exposed
    assert f'llmgw_t_total{{m="series-1999-{"x" * 40}"}} 1999.0' in exposed
