"""Autoscaling and scale to zero through a real gateway launching real embedded engines:
a load ramp takes a model from 1 to 3 replicas and back after the delay, a model at zero
serves its first request once a replica started, and its queue is bounded."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fleet.conftest import (
    ADMIN_KEY,
    Load,
    chat,
    failures,
    metric,
    ready_ids,
    status,
    wait_for,
)
from tests.support import Server, start_gateway, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = {
        "server": {"admin_key": ADMIN_KEY},
        "health": {"interval_s": 0.5},
        "models": [
            {"name": "elastic", "engine": "transformers", "model": "demo",
             "engine_args": {"max_batch_size": 4},
             "autoscaling": {"min_replicas": 1, "max_replicas": 3,
                             "target_ongoing_requests": 1, "upscale_delay_s": 0.5,
                             "downscale_delay_s": 3, "look_back_period_s": 1,
                             "max_kv_usage": None, "max_engine_queue": None}},
            {"name": "burst", "engine": "transformers", "model": "demo",
             "autoscaling": {"min_replicas": 0, "max_replicas": 1,
                             "downscale_to_zero_delay_s": 2, "look_back_period_s": 1,
                             "queue_timeout_s": 60}},
            # Its engine cannot start (the Python given exits at once): requests queue
            # until their bound.
            {"name": "broken", "engine": "transformers", "model": "demo",
             "launch": {"python": "/bin/false"}, "startup_timeout_s": 5,
             "autoscaling": {"min_replicas": 0, "max_replicas": 1,
                             "queue_timeout_s": 1.5, "max_queued_requests": 1}},
        ],
    }
    server = start_gateway(config, tmp_path_factory.mktemp("autoscale"))
    yield server
    server.stop()


def test_load_ramp_scales_out_to_max_and_back(gateway: Server) -> None:
    assert ready_ids(gateway, "elastic") == ["elastic-0"]
    # Long streams (ignore_eos) keep ~4 requests open: 4 / target 1 asks for 4, max is 3.
    load = Load(gateway.url, lambda n: chat("elastic", 300, stream=True, ignore_eos=True),
                workers=4, max_requests=400).start()
    try:
        scaled = wait_for(gateway, lambda s: len(ready_ids(gateway, "elastic")) == 3, 120,
                          "elastic to reach 3 ready replicas under load")
        wait_until(lambda: {o.replica for o in load.outcomes} > {"elastic-0"}, 120,
                   "a request served by a new replica")
    finally:
        outcomes = load.stop()
    pool = scaled["models"]["elastic"]["pools"]["mixed"]
    assert pool["autoscaler"]["desired"] == 3
    assert pool["autoscaler"]["last_change"]["direction"] == "up"
    wait_for(gateway, lambda s: ready_ids(gateway, "elastic") != [] and
             len(s["models"]["elastic"]["pools"]["mixed"]["replicas"]) == 1, 90,
             "elastic back to 1 replica once the load stopped")
    assert failures(outcomes) == []
    assert {o.replica for o in outcomes} > {"elastic-0"}  # the new replicas served too
    assert metric(gateway, "llmgw_autoscaler_decisions_total", model="elastic",
                  direction="down") is not None
    kept = set(ready_ids(gateway, "elastic"))
    for replica in {"elastic-0", "elastic-1", "elastic-2"} - kept:  # their series went too
        assert metric(gateway, "llmgw_replica_in_flight_requests", replica=replica) is None


def test_a_model_at_zero_is_listed_ready_and_serves_its_first_request(
        gateway: Server) -> None:
    assert status(gateway)["models"]["burst"]["pools"]["mixed"]["replicas"] == []
    assert httpx.get(gateway.url + "/ready").status_code == 200
    listed = [m["id"] for m in httpx.get(gateway.url + "/v1/models").json()["data"]]
    assert "burst" in listed
    response = httpx.post(gateway.url + "/v1/chat/completions", json=chat("burst"), timeout=90)
    assert response.status_code == 200, response.text
    assert response.headers["x-llmgw-replica"] == "burst-0"
    # The gauge is sampled each control tick: it falls back to 0 by the next one.
    wait_until(lambda: metric(gateway, "llmgw_queued_requests", model="burst") == 0, 10,
               "the queued-requests gauge back to 0")
    wait_for(gateway, lambda s: s["models"]["burst"]["pools"]["mixed"]["replicas"] == [], 60,
             "burst back to zero after downscale_to_zero_delay_s")
    assert httpx.get(gateway.url + "/ready").status_code == 200


def test_a_client_leaving_the_queue_leaves_nothing_behind(gateway: Server) -> None:
    with pytest.raises(httpx.TimeoutException):
        httpx.post(gateway.url + "/v1/chat/completions", json=chat("burst"), timeout=0.5)
    wait_for(gateway, lambda s: s["models"]["burst"]["queued"] == 0, 30,
             "the queue to forget the client that left")


def test_the_queue_is_bounded_in_count_and_time(gateway: Server) -> None:
    def ask() -> httpx.Response:
        return httpx.post(gateway.url + "/v1/chat/completions", json=chat("broken"),
                          timeout=30)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(ask)
        wait_for(gateway, lambda s: s["models"]["broken"]["queued"] == 1, 30,
                 "the first request to queue")
        second = ask()  # the queue holds one: refused at once
        assert second.status_code == 503 and "already wait" in second.json()["error"]["message"]
        timed_out = first.result()
    assert timed_out.status_code == 503
    assert timed_out.headers["retry-after"]
    assert "became ready within" in timed_out.json()["error"]["message"]


def test_status_needs_the_admin_key(gateway: Server, tmp_path: Path) -> None:
    assert httpx.get(gateway.url + "/admin/status").status_code == 401
    assert httpx.post(gateway.url + "/admin/reload").status_code == 401
