"""A replica killed (kill -9) or frozen (SIGSTOP) under load: no request that had not
received a byte fails; streams in flight on a dead replica end with an SSE error event
and [DONE]; a frozen replica is ejected by its requests' first-byte timeouts, traffic
flows to the others, and it comes back half-open once it answers again. A stream whose
replica freezes mid-way ends after ``stream_idle_s`` and its engine request is aborted."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx

from tests.chaos.conftest import Fleet, StreamLoad, stream

OUTLIER = {"consecutive_failures": 2, "base_ejection_s": 2, "max_ejection_s": 10,
           "max_ejected_percent": 50}
FIRST_BYTE_S = 0.3


def test_kill_9_under_load_fails_only_streams_already_under_way(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(outlier=OUTLIER, timeouts={"first_byte_s": 2}, health={})
    with StreamLoad(fleet.gateway.url, max_tokens=10, workers=6) as load, \
            httpx.Client(timeout=30) as client, \
            client.stream("POST", fleet.gateway.url + "/v1/chat/completions", json={
                "model": "fake", "stream": True, "max_tokens": 500,
                "messages": [{"role": "user", "content": "a long one"}]}) as long:
        load.wait_for(20)
        # A stream known to be in flight on the victim: the one killed under it.
        victim = long.headers["x-llmgw-replica"]
        lines = long.iter_lines()
        assert next(lines).startswith("data: ")
        os.kill(fleet.engines[victim].proc.pid, signal.SIGKILL)
        rest = [line[6:] for line in lines if line.startswith("data: ")]
        load.wait_for(40)
    assert rest[-1] == "[DONE]" and '"error"' in rest[-2], rest[-3:]
    results = load.results
    unserved = [r for r in results if not r.got_bytes or r.status != 200]
    assert unserved == []  # no request that had not received a byte failed
    cut = [r for r in results if not r.finished]
    assert all(r.ended_with_error_event and r.replica == victim for r in cut), cut
    # The last requests all started after the kill: the others served them to the end.
    assert all(r.finished and r.replica != victim for r in results[-20:])
    assert fleet.metric("llmgw_retries_denied_total", model="fake") in (None, 0.0)


def test_sigstop_ejects_the_hung_replica_then_it_comes_back_half_open(
        fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(outlier=OUTLIER, timeouts={"first_byte_s": FIRST_BYTE_S},
                                 # the health loop's own timeouts must not take it out
                                 # first: this is about requests noticing
                                 health={"timeout_s": 0.3, "failure_threshold": 100},
                                 # least-load would mostly avoid the hung replica by
                                 # itself (its stuck streams count as load); round-robin
                                 # keeps sending it every third request until ejected
                                 routing="round-robin")
    victim = "fake-1"
    pid = fleet.engines[victim].proc.pid
    with StreamLoad(fleet.gateway.url, max_tokens=5, workers=4) as load:
        load.wait_for(20)
        os.kill(pid, signal.SIGSTOP)
        stopped_at, before = time.monotonic(), load.count()
        fleet.wait(lambda: fleet.metric("llmgw_replica_ejected", replica=victim) == 1.0,
                   5, "the hung replica ejected")
        ejected_after = time.monotonic() - stopped_at
        status = fleet.replicas()[victim]["outlier"]
        load.wait_for(30)
        frozen = load.results[before:]
        os.kill(pid, signal.SIGCONT)
        # Half-open after base_ejection_s: a trial request or a health check brings it in.
        fleet.wait(lambda: fleet.metric("llmgw_replica_ejected", replica=victim) == 0.0
                   and fleet.replicas()[victim]["outlier"]["state"] == "in", 10,
                   "the replica back in")
        with httpx.Client(timeout=10) as client:
            fleet.wait(lambda: stream(client, fleet.gateway.url, 1).replica == victim, 10,
                       "a request served by the replica that came back")
    # Consecutive first-byte timeouts eject it within a few of their periods.
    assert ejected_after < OUTLIER["consecutive_failures"] * FIRST_BYTE_S + 2.0
    assert status["state"] == "ejected" and status["ejections"] == 1
    assert fleet.metric("llmgw_replica_ejections_total", replica=victim,
                        reason="timeout") == 1.0
    # While it hung, every request was retried elsewhere before any byte and completed.
    assert all(r.finished and r.replica != victim for r in frozen), \
        [r for r in frozen if not r.finished][:3]
    assert all(r.finished for r in load.results)


def test_a_stream_whose_replica_hangs_mid_way_ends_with_an_error_and_is_aborted(
        fleet_factory: Any) -> None:
    idle_s = 0.5
    fleet: Fleet = fleet_factory(outlier=OUTLIER, timeouts={"stream_idle_s": idle_s},
                                 health={"timeout_s": 0.3, "failure_threshold": 100})
    with httpx.Client(timeout=30) as client, \
            client.stream("POST", fleet.gateway.url + "/v1/chat/completions", json={
                "model": "fake", "stream": True, "max_tokens": 500,
                "messages": [{"role": "user", "content": "a long one"}]}) as long:
        victim = long.headers["x-llmgw-replica"]
        engine = fleet.engines[victim]
        lines = long.iter_lines()
        assert next(lines).startswith("data: ")
        os.kill(engine.proc.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        rest = [line[6:] for line in lines if line.startswith("data: ")]
        silent_for = time.monotonic() - stopped_at
    assert rest[-1] == "[DONE]" and 'stream_idle_s' in rest[-2], rest[-3:]
    # The idle window opens at the gateway's last read, a few ms before the SIGSTOP that
    # starts this clock (0.494 s was seen): the lower bound allows for that gap.
    assert idle_s - 0.1 <= silent_for < idle_s + 5  # not held until the engine wakes
    assert fleet.replicas()[victim]["outlier"]["failures"] == 1  # counted against it
    os.kill(engine.proc.pid, signal.SIGCONT)
    # Awake, the engine finds the gateway's connection closed and aborts the request.
    fleet.wait(lambda: engine_counts(engine.url) == (0, 1), 10, "the engine request aborted")


def engine_counts(url: str) -> tuple[float, float]:
    """The fake engine's requests running and aborted, from its /metrics."""
    text = httpx.get(url + "/metrics", timeout=5).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines())
    return (float(values["llmgw_engine_requests_running"]),
            float(values["llmgw_engine_requests_aborted_total"]))
