"""Every Grafana dashboard of llmgw, evaluated by a real Prometheus scraping a live
gateway under traffic that exercises what the panels show: routing with shadow
policies, LoRA on the embedded engine with the demo adapters, PD on fake engines, API
keys with limits and an admission queue, a model scaled from zero behind an alias, a
failing replica ejected, a reload, tools (a worker and an in-process batched one, a tool
that raises, a server-side tool loop on the fake engine's scripted tool calls). Each
panel's PromQL must be valid and return data.

Panels that need vLLM (its KV events, prefix-cache counters and own metrics) are only
checked for validity here; tests/vllm/test_vllm_e2e.py evaluates them against real
vLLM engines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from llmgw.tenancy.keys import hash_key
from tests.prometheus import Prometheus, evaluate_panels
from tests.support import Server, start_fake_engine, start_gateway, wait_until

pytestmark = pytest.mark.e2e

ADMIN = {"authorization": "Bearer dashboards-admin"}
KEYS = {"team-a": "llmgw-dashboards-team-a", "nightly": "llmgw-dashboards-nightly"}
FAST = {"token_delay_ms": 5}
# Longer than the prefix-cache scorer's 128-character block: shadow policies predict.
LONG = "You are a helpful assistant. " * 12


@pytest.fixture(scope="module")
def flaky_engines() -> Iterator[list[Server]]:
    engines = [start_fake_engine(name="flaky"),
               start_fake_engine("--fail-status", "500", name="flaky")]
    yield engines
    for engine in engines:
        engine.stop()


@pytest.fixture(scope="module")
def gateway(flaky_engines: list[Server],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("dashboards")
    config: dict[str, Any] = {
        "server": {"admin_key": "dashboards-admin", "state_dir": str(tmp / "state")},
        "health": {"interval_s": 1, "stats_interval_s": 1,
                   # Ejected for longer than any run of this module takes (a slow
                   # machine included): half-open, a good health check would bring it back.
                   "outlier": {"consecutive_failures": 2, "base_ejection_s": 3600,
                               "max_ejection_s": 3600}},
        "auth": {"keys": [
            {"name": "team-a", "hash": hash_key(KEYS["team-a"])},
            {"name": "nightly", "hash": hash_key(KEYS["nightly"]), "rpm": 2,
             "priority": "batch"}]},
        "models": [
            {"name": "chat", "engine": "fake", "model": "fake", "replicas": 2,
             "routing": "session-aware", "shadow": ["prefix-aware", "least-load"],
             "engine_args": {**FAST, "scripted_tool_calls": True}},
            {"name": "queue", "engine": "fake", "model": "fake", "replicas": 1,
             "engine_args": {"token_delay_ms": 300},  # 1.2 s a request: others queue
             "admission": {"max_in_flight_per_replica": 1, "max_queued": 1,
                           "queue_timeout_s": 10}},
            {"name": "pd", "engine": "fake", "model": "fake", "disaggregation": {
                "protocol": "vllm", "prefill": {"replicas": 1},
                "decode": {"replicas": 1, "engine_args": FAST},
                "conditional": {"min_prompt_tokens": 50}}},
            {"name": "burst", "engine": "fake", "model": "fake", "engine_args": FAST,
             "autoscaling": {"min_replicas": 0, "max_replicas": 1,
                             "downscale_to_zero_delay_s": 600, "queue_timeout_s": 60}},
            {"name": "flaky", "engine": "openai", "url": [e.url for e in flaky_engines],
             "routing": "round-robin", "max_attempts": 2},
            {"name": "lora", "engine": "transformers", "model": "demo", "replicas": 1,
             "lora": {"max_adapters_per_replica": 1,
                      "adapters": [{"name": f"demo-lora-{i}", "source": "demo"}
                                   for i in range(3)],
                      "hotness": {"interval_s": 1}}},
        ],
        "tools": [{"name": "rec", "import_path": "tests.fakes.tools:Recorder", "replicas": 1},
                  {"name": "bat", "import_path": "tests.fakes.tools:Recorder", "replicas": 0}],
        "aliases": [{"name": "assistant", "targets": [{"model": "chat", "weight": 50},
                                                      {"model": "burst", "weight": 50}]}],
    }
    server = start_gateway(config, tmp)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(gateway: Server) -> Iterator[Prometheus]:
    prom = Prometheus({"llmgw": [gateway.url]})
    try:
        prom.wait_for_targets()
        yield prom
    finally:
        prom.stop()


def chat(client: httpx.Client, model: str, key: str = "team-a", content: str = "hello",
         stream: bool = False, **headers: str) -> int:
    body = {"model": model, "max_tokens": 4, "stream": stream,
            "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    auth = {"authorization": f"Bearer {KEYS.get(key, key)}", **headers}
    with client.stream("POST", "/v1/chat/completions", json=body, headers=auth) as response:
        response.read()
        return response.status_code


def drive(gateway: Server) -> None:
    """Traffic for every panel: each model, streamed and not, errors of each kind."""
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for i in range(6):
            assert chat(client, "chat", content=LONG + str(i % 2), stream=bool(i % 2),
                        **{"x-session-id": f"s{i % 3}"}) == 200
            assert chat(client, "assistant", stream=bool(i % 2),
                        **{"x-session-id": f"a{i}"}) == 200
        for stream in (False, True):  # one short prompt served whole, one split in two legs
            assert chat(client, "pd", stream=stream) == 200
            assert chat(client, "pd", content="word " * 300, stream=stream) == 200
        assert chat(client, "burst", stream=True) == 200  # scaled from zero at first
        for i in range(6):  # round robin: the failing replica fails twice, is ejected
            assert chat(client, "flaky", stream=bool(i % 2)) == 200
        for adapter in (0, 1, 2, 0):  # one slot: each load evicts the last adapter
            assert chat(client, f"demo-lora-{adapter}") == 200
        for tool, arguments, status in (("rec_echo", {"text": "hi"}, 200),
                                        ("rec_fail", {"message": "no"}, 500),
                                        ("bat_square", {"n": 3}, 200)):
            assert client.post(f"/v1/tools/{tool}", json={"arguments": arguments}, headers={
                "authorization": f"Bearer {KEYS['team-a']}"}).status_code == status
        loop = client.post("/v1/chat/completions", headers={
            "authorization": f"Bearer {KEYS['team-a']}"}, json={
            "model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "mcp", "server_label": "llmgw", "require_approval": "never",
                       "allowed_tools": ["rec_echo"]}]})
        assert loop.status_code == 200, loop.text
        assert chat(client, "no-such-model") == 404
        assert chat(client, "chat", key="llmgw-not-a-key") == 401
        assert 429 in [chat(client, "chat", key="nightly") for _ in range(3)]  # 2 a minute
    with ThreadPoolExecutor(4) as pool:  # one runs, one waits, the others are shed
        statuses = sorted(pool.map(lambda _: one_request(gateway, "queue"), range(4)))
    assert statuses[0] == 200 and statuses[-1] == 503, statuses
    assert httpx.post(gateway.url + "/admin/reload", headers=ADMIN,
                      timeout=30).status_code == 200


def one_request(gateway: Server, model: str) -> int:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        return chat(client, model)


def test_every_panel_returns_data_from_a_real_prometheus(gateway: Server,
                                                         prometheus: Prometheus) -> None:
    # Twice, with a scrape between: a series born in the first round (a new label set)
    # is seen increasing in the second, as a dashboard sees steady traffic.
    drive(gateway)
    prometheus.wait_for_scrape(after=time.time())
    drive(gateway)
    # The gateway saw the failing replica out (the ejection panel has something to show).
    wait_until(lambda: 'llmgw_replica_ejected{model="flaky",replica="flaky-1"} 1.0'
               in httpx.get(gateway.url + "/metrics").text, 10, "flaky-1 ejected")
    checked = evaluate_panels(prometheus, data=lambda panel: panel.needs is None)
    assert {c.dashboard for c in checked} == {
        "llmgw-gateway", "llmgw-routing-lora", "llmgw-tenants", "llmgw-pd",
        "llmgw-engines", "llmgw-fleet", "llmgw-resilience", "llmgw-tools"}
