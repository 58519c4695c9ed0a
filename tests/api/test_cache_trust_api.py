"""The routing loop closed through a real gateway: engines that report no cached tokens
where the prefix index predicts hits get their affinity discounted, shown in
x-llmgw-route."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import orjson
import pytest

from llmgw.routing.cache_trust import MIN_SAMPLES
from tests.support import Server, start_fake_engine, start_gateway

SYSTEM = "You are a careful assistant for a shop that sells lamps. " * 20


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with ExitStack() as running:
        # Engines that evicted everything: whatever the index remembers, nothing is cached.
        urls = []
        for _ in range(2):
            engine = start_fake_engine("--cached-tokens", "0")
            running.callback(engine.stop)
            urls.append(engine.url)
        model = {"name": "m", "engine": "fake", "url": urls, "routing": "prefix-aware"}
        server = start_gateway({"models": [model]}, tmp_path_factory.mktemp("trust"))
        running.callback(server.stop)
        yield server


def ask(gateway: Server, question: str) -> httpx.Response:
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"x-llmgw-explain": "1"},
        json={
            "model": "m",
            "max_tokens": 1,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question},
            ],
        },
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    return response


def test_replicas_whose_engines_miss_lose_affinity_within_bounds(gateway: Server) -> None:
    first = orjson.loads(ask(gateway, "q0").headers["x-llmgw-route"])
    assert set(first["affinity_factor"].values()) == {1.0}
    # Every later request is predicted to find the system prompt cached, and does not.
    for i in range(1, 2 * MIN_SAMPLES + 4):
        route = orjson.loads(ask(gateway, f"q{i}").headers["x-llmgw-route"])
    factors = route["affinity_factor"]
    assert len(factors) == 2
    assert min(factors.values()) == 0.5  # the floor, never below
    assert all(0.5 <= f <= 1.0 for f in factors.values())


def test_the_factors_are_gauges(gateway: Server) -> None:
    for i in range(2 * MIN_SAMPLES + 4):  # whichever test runs first, the floor is reached
        ask(gateway, f"g{i}")
    text = httpx.get(gateway.url + "/metrics").text
    factors = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('llmgw_routing_affinity_factor{model="m"')
    ]
    assert len(factors) == 2
    assert min(factors) == 0.5
    assert max(factors) <= 1.0
