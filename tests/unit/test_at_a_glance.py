"""What `llmgw up` and `llmgw status` show, without processes: the startup progress of
the fleet's launches, its live view, and recent error rates read from the counters."""

from __future__ import annotations

import io
import logging

import pytest

from llmgw.console import StartupView
from llmgw.fleet.progress import ReplicaStart, StartupProgress
from llmgw.metrics import Metrics, RecentRates


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_tells_each_change_and_forgets_ended_launches() -> None:
    clock = Clock()
    progress = StartupProgress(clock)
    told: list[tuple[str, str, float | None]] = []
    progress.listeners.append(lambda e: told.append((e.id, e.phase, e.seconds)))
    progress.launching("m", "mixed", "m-0")
    progress.phase("m-0", "loading")
    progress.phase("m-0", "loading")  # no change: not told again
    clock.now += 2.5
    progress.ready("m-0")
    progress.phase("m-0", "loading")  # a restart in place after the start: not a start
    progress.launching("m", "mixed", "m-1")
    progress.failed("m-1", "engine m-1 exited with code 1")
    assert told == [("m-0", "starting", None), ("m-0", "loading", None),
                    ("m-0", "ready", 2.5), ("m-1", "starting", None), ("m-1", "failed", 0.0)]
    assert progress.starting == {}


def test_the_live_view_redraws_in_place_and_prints_logs_and_failures_above() -> None:
    clock, out = Clock(), io.StringIO()
    progress = StartupProgress(clock)
    view = StartupView(out, live=True, clock=clock)
    root = logging.getLogger()
    before = list(root.handlers)
    handler = logging.StreamHandler(out)
    root.addHandler(handler)
    try:
        view.attach(progress)
        progress.launching("m", "mixed", "m-0")
        progress.launching("m", "mixed", "m-1")
        progress.phase("m-0", "loading")
        logging.getLogger("llmgw.test").warning("a log line")
        clock.now += 3
        progress.ready("m-0")
        progress.failed("m-1", "engine m-1 exited with code 2; last lines of x.log:\nboom")
        view.finish()
        assert root.handlers == [*before, handler]  # the wrapper is gone again
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert "\x1b[3F\x1b[J" in text  # back to the table's first line, erased, redrawn
    assert "a log line\nstarting 2 replica(s)" in text  # the log printed above the table
    assert "m-1: failed after 3.0s: engine m-1 exited with code 2; last lines of x.log:\nboom\n" \
        in text
    final = text.rsplit("\x1b[J", 1)[1]
    assert final == ("1 of 2 replica(s) failed to start (1 ready)\n"
                     "  m-0  ready in 3.0s\n"
                     "  m-1  failed after 3.0s (its log is above)\n")
    assert view.shown_errors == {
        "engine m-1 exited with code 2; last lines of x.log:\nboom": "m-1"}


def test_without_a_terminal_each_change_is_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = StartupProgress(clock)
    view = StartupView(io.StringIO(), live=False, clock=clock)
    view.attach(progress)
    with caplog.at_level(logging.INFO, logger="llmgw.startup"):
        progress.launching("m", "mixed", "m-0")
        progress.phase("m-0", "loading")
        clock.now += 1.25
        progress.ready("m-0")
        view.finish()
        progress.launching("m", "mixed", "m-1")  # after startup: not shown
    assert [r.getMessage() for r in caplog.records] == [
        "m-0: starting", "m-0: loading", "m-0: ready in 1.2s", "1 replica(s) ready in 1.2s"]
    assert isinstance(view.rows["m-0"], ReplicaStart)


def test_recent_rates_are_differences_of_the_counters_over_the_window() -> None:
    clock, metrics = Clock(), Metrics()
    recent = RecentRates(metrics, window_s=60, every_s=5, clock=clock)
    for _ in range(10):
        metrics.requests.labels("m", "chat", "200").inc()
    clock.now += 10
    first = recent.rates()  # since the start: 10 requests in 10 s
    assert first["window_s"] == 10
    assert first["models"]["m"] == {
        "requests_per_s": 1.0, "client_errors_per_s": 0.0, "server_errors_per_s": 0.0,
        "server_error_ratio": 0.0, "errors_by_code": {}}
    for t in range(12):  # 2 minutes: one sample every 10 s
        clock.now += 10
        recent.sample()
        if t >= 8:  # the last 40 s: 8 requests, 4 of them 5xx
            metrics.requests.labels("m", "chat", "503").inc()
            metrics.requests.labels("m", "chat", "200").inc()
    metrics.requests.labels("m", "chat", "429").inc()  # and one 429, now
    metrics.request_errors.labels("m", "rate_limit_exceeded").inc()
    latest = recent.rates()
    assert latest["window_s"] == 60
    assert latest["models"]["m"] == {
        "requests_per_s": round(9 / 60, 4), "client_errors_per_s": round(1 / 60, 4),
        "server_errors_per_s": round(4 / 60, 4), "server_error_ratio": round(4 / 9, 4),
        "errors_by_code": {"rate_limit_exceeded": round(1 / 60, 4)}}


def test_status_reads_the_admin_key_variable_the_gateway_reads() -> None:
    from llmgw import cli
    from llmgw.api.admin import ADMIN_KEY_ENV

    assert cli._ADMIN_KEY_ENV == ADMIN_KEY_ENV  # a copy: `status` skips the web stack


def test_status_text_shows_every_part_of_the_document() -> None:
    from llmgw.console import render_status

    replica = {"id": "m-0", "state": "ready", "healthy": True, "in_flight": 3, "url": "u",
               "version": "v", "outlier": {"state": "ejected"},
               "engine": {"running": 2, "waiting": 5, "kv_usage": 0.314},
               "adapters": ["sql", "chat"]}
    doc = {
        "models": {"m": {
            "served": True, "engine": "vllm", "adapters": ["chat", "sql"],
            "routing": {"policy": {"mixed": "prefix-aware"}, "shadow": []},
            "queued": 2, "admission": {"in_flight": 8, "queued": 4},
            "pools": {"mixed": {
                "replicas": [replica],
                "starting": [{"id": "m-1", "version": "v", "for_s": 12.3, "phase": "loading"}],
                "target": 2, "version": "v", "last_error": "engine m-2 exited\nits log",
                "autoscaler": {"desired": 2, "wanted": 2, "reason": "load", "min_replicas": 1,
                               "max_replicas": 4, "last_change": {
                                   "direction": "up", "reason": "load", "to": 2,
                                   "ago_s": 30.0}}}}}},
        "aliases": {"chat": {"m": 0.9, "other": 0.1}},
        "traffic": {"window_s": 60.0, "models": {"m": {
            "requests_per_s": 4.0, "client_errors_per_s": 0.5, "server_errors_per_s": 0.25,
            "server_error_ratio": 0.0625, "errors_by_code": {"upstream_error": 0.25}}}},
        "reload": {"at": 1000.0, "ok": False, "error": "models[0]: bad", "plan": None},
        "time": 1042.0,
    }
    assert render_status(doc, "http://gw") == """\
llmgw at http://gw: 1 model(s); traffic over the last 60s

m  engine=vllm  routing=prefix-aware
  adapters: chat, sql
  traffic: 4.00 req/s, 4xx 0.50/s, 5xx 0.25/s (6.2%); errors: upstream_error 0.25/s
  waiting for a replica: 2
  admission: 8 in flight, 4 queued
  replica  pool   state     health   in-flight  running  queue  kv   adapters
  m-0      mixed  ready     ejected  3          2        5      31%  sql,chat
  m-1      mixed  starting  loading  -          -        -      -    12s
  autoscaler (mixed): 2 wanted of 1..4; last up to 2 (load) 30s ago
  last start error (mixed): engine m-2 exited

alias chat -> m 90%, other 10%

last reload 42s ago: refused: models[0]: bad
"""
