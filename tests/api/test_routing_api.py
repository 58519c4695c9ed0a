"""Routing through a real gateway: sessions and prefixes stick, decisions are explained
(x-llmgw-route, /debug/route), and configs/routing.yaml's policy is what it says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from llmgw.config import load_config
from tests.support import ROOT, Server, start_fake_engine, start_gateway

SYSTEM = "You are a meticulous assistant that answers in haiku. " * 30


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    engines = [start_fake_engine() for _ in range(4)]
    policies = load_config([ROOT / "configs" / "routing.yaml"]).model_dump()["policies"]
    config = {
        "policies": policies,
        "models": [
            {"name": "chat", "engine": "fake", "url": [e.url for e in engines],
             "routing": "chat-affinity"},
            {"name": "prefix", "engine": "fake", "url": [e.url for e in engines],
             "routing": "prefix-aware", "shadow": ["round-robin", "session-aware"]},
        ],
    }
    try:
        server = start_gateway(config, tmp_path_factory.mktemp("routing"))
        yield server
        server.stop()
    finally:
        for engine in engines:
            engine.stop()


def chat(gateway: Server, model: str, messages: list[dict[str, str]],
         headers: dict[str, str] | None = None) -> httpx.Response:
    response = httpx.post(gateway.url + "/v1/chat/completions", headers=headers or {},
                          json={"model": model, "messages": messages, "max_tokens": 1})
    assert response.status_code == 200, response.text
    return response


def test_a_session_stays_on_one_replica(gateway: Server) -> None:
    history = [{"role": "user", "content": "hello"}]
    homes = set()
    for turn in range(6):
        reply = chat(gateway, "chat", history, {"x-session-id": "conversation-7"})
        homes.add(reply.headers["x-llmgw-replica"])
        history += [{"role": "assistant", "content": "tok0"},
                    {"role": "user", "content": f"turn {turn}"}]
    assert len(homes) == 1


def test_sessions_spread_over_replicas(gateway: Server) -> None:
    homes = {chat(gateway, "chat", [{"role": "user", "content": "hi"}],
                  {"x-session-id": f"s{i}"}).headers["x-llmgw-replica"] for i in range(24)}
    assert len(homes) >= 3


def test_a_shared_prefix_goes_back_to_the_replica_that_saw_it(gateway: Server) -> None:
    first = chat(gateway, "prefix", [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": "q0"}])
    for i in range(1, 6):
        again = chat(gateway, "prefix", [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": f"q{i}"}])
        assert again.headers["x-llmgw-replica"] == first.headers["x-llmgw-replica"]


def test_explain_header_shows_each_scorer(gateway: Server) -> None:
    reply = chat(gateway, "chat", [{"role": "user", "content": "hi"}],
                 {"x-session-id": "explained", "x-llmgw-explain": "1"})
    route = orjson.loads(reply.headers["x-llmgw-route"])
    assert route["replica"] == reply.headers["x-llmgw-replica"] == route["ranked"][0]
    assert set(route["scores"]) == {"session", "prefix-cache", "least-load"}
    assert route["scores"]["session"] == {route["replica"]: 1.0}
    assert route["dropped"] == {"has-capacity": []}
    assert "x-llmgw-route" not in chat(gateway, "chat", [{"role": "user", "content": "x"}]).headers


def test_debug_route_is_a_dry_run_matching_the_real_decision(gateway: Server) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-session-id": "dry-run"}
    dry = httpx.post(gateway.url + "/debug/route", json=body, headers=headers).json()
    assert dry["policy"] == "chat-affinity" and dry["model"] == "chat"
    real = chat(gateway, "chat", body["messages"], headers)  # type: ignore[arg-type]
    assert real.headers["x-llmgw-replica"] == dry["replica"]
    missing = httpx.post(gateway.url + "/debug/route", json={"model": "nope", "messages": []})
    assert missing.status_code in (400, 404) and "error" in missing.json()


def test_routing_yaml_documents_every_policy_knob() -> None:
    text = (ROOT / "configs" / "routing.yaml").read_text()
    for knob in ("load_factor", "block_chars", "max_blocks", "capacity_per_replica", "ttl_s",
                 "chars_per_token",
                 "abs_threshold", "rel_threshold", "max_load", "x-llmgw-explain",
                 "/debug/route"):
        assert knob in text, knob
    assert Path(ROOT / "configs" / "routing.yaml").exists()


def metric_sum(text: str, name: str, *labels: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(label in line for label in labels))


def test_shadow_policies_rank_every_request_without_deciding(gateway: Server) -> None:
    before = httpx.get(gateway.url + "/metrics").text
    picks = [chat(gateway, "prefix", [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": f"shadowed {i}"}]
                  ).headers["x-llmgw-replica"] for i in range(8)]
    assert len(set(picks)) == 1  # the live prefix-aware policy decided
    after = httpx.get(gateway.url + "/metrics").text
    for policy in ("round-robin", "session-aware"):
        key = ("llmgw_shadow_decisions_total", 'model="prefix"', f'policy="{policy}"')
        assert metric_sum(after, *key) - metric_sum(before, *key) == 8
    rr = [line for line in after.splitlines() if line.startswith("llmgw_shadow_picks_total{")
          and 'policy="round-robin"' in line]
    assert len(rr) == 4  # round-robin would have spread them over all 4 replicas
    # session-aware has a prefix scorer too: its picks' cached share is recorded
    share = ("llmgw_shadow_predicted_cache_share_count", 'model="prefix"',
             'policy="session-aware"')
    assert metric_sum(after, *share) - metric_sum(before, *share) == 8
