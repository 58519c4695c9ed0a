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
ADMIN_KEY = "routing-test-admin-key"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
MAX_BODY_BYTES = 64 * 1024
DEEP_JSON = b"[" * 300 + b"]" * 300  # orjson reads 1024 levels, writes 254
DEEP = "deep"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    engines = [start_fake_engine() for _ in range(4)]
    engines.append(start_fake_engine("--fail-status", "400"))  # rejects every request
    policies = load_config([ROOT / "configs" / "routing.yaml"]).model_dump()["policies"]
    config = {
        "server": {"admin_key": ADMIN_KEY, "max_body_bytes": MAX_BODY_BYTES},
        "policies": policies,
        "models": [
            {"name": "chat", "engine": "fake", "url": [e.url for e in engines[:4]],
             "routing": "chat-affinity"},
            {"name": "prefix", "engine": "fake", "url": [e.url for e in engines[:4]],
             "routing": "prefix-aware", "shadow": ["round-robin", "session-aware"]},
            # One replica serves, the other rejects: requests scored but never routed.
            {"name": "picky", "engine": "fake", "url": [engines[0].url, engines[4].url],
             "routing": "prefix-aware"},
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


def debug_route(gateway: Server, body: object, headers: dict[str, str] | None = None
                ) -> httpx.Response:
    return httpx.post(gateway.url + "/debug/route", json=body,
                      headers={**ADMIN, **(headers or {})})


def test_debug_route_is_a_dry_run_matching_the_real_decision(gateway: Server) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-session-id": "dry-run"}
    dry = debug_route(gateway, body, headers).json()
    assert dry["policy"] == "chat-affinity" and dry["model"] == "chat"
    real = chat(gateway, "chat", body["messages"], headers)  # type: ignore[arg-type]
    assert real.headers["x-llmgw-replica"] == dry["replica"]
    missing = debug_route(gateway, {"model": "nope", "messages": []})
    assert missing.status_code in (400, 404) and "error" in missing.json()
    # A body /v1 refuses is refused here too (it got a routing answer before the fuzzer).
    untied = {"model": "chat", "messages": [{"role": "tool", "content": "x"}]}
    assert_error(debug_route(gateway, untied), 400, "invalid_request_error")
    assert debug_route(gateway, untied).json()["error"]["param"] == "messages.0.tool_call_id"


def assert_error(response: httpx.Response, status: int, type_: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == type_


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", f"Basic {ADMIN_KEY}",
                                           "Bearer"], ids=["none", "wrong", "scheme", "blank"])
def test_debug_route_needs_the_admin_key(gateway: Server, authorization: str | None) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": authorization} if authorization else {}
    response = httpx.post(gateway.url + "/debug/route", json=body, headers=headers)
    assert_error(response, 401, "authentication_error")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_debug_route_refuses_bodies_over_max_body_bytes(gateway: Server, chunked: bool) -> None:
    body = b'{"model":"chat","messages":[{"role":"user","content":"' + b"a" * MAX_BODY_BYTES \
        + b'"}]}'
    content = iter([body]) if chunked else body  # an iterator is sent chunked
    response = httpx.post(gateway.url + "/debug/route", content=content, headers=ADMIN)
    assert_error(response, 413, "invalid_request_error")


@pytest.mark.parametrize("model", ["chat", "prefix"])
@pytest.mark.parametrize(
    "extra",
    [{"content": [{"type": "text", "text": None}]},
     {"content": [{"type": "text", "text": 5}, {"type": "text", "text": {"a": [1]}}]},
     {"content": [{"type": "text"}, "bare", None, 7]},
     {"tools": DEEP}],
    ids=["null-text", "non-string-text", "odd-parts", "deep-tools"])
def test_routing_helpers_skip_what_is_not_text(gateway: Server, model: str,
                                               extra: dict[str, object]) -> None:
    # Prefix and session scorers hash only text: odd parts route like any other request
    # (the engine, not routing, judges them) and never fail it.
    message = {"role": "user", "content": extra.get("content", "hi")}
    body = orjson.dumps({"model": model, "messages": [message], "max_tokens": 1})
    if "tools" in extra:  # deeper than orjson writes: spliced in as bytes
        body = body[:-1] + b',"tools":' + DEEP_JSON + b"}"
    response = httpx.post(gateway.url + "/v1/chat/completions", content=body)
    assert response.status_code == 200, response.text
    dry = httpx.post(gateway.url + "/debug/route", content=body, headers=ADMIN)
    assert dry.status_code == 200, dry.text


def test_a_reused_request_id_scores_and_teaches_its_own_prompt(gateway: Server) -> None:
    """Routing's per-request state is keyed by the gateway's own id: a client re-sending an
    x-request-id (a retry, a fan-out under one trace id) is scored on its own prompt and
    never records another request's prompt in the prefix index."""
    def send(prompt: str, request_id: str, explain: bool = False) -> httpx.Response:
        headers = {"x-request-id": request_id, **({"x-llmgw-explain": "1"} if explain else {})}
        return httpx.post(gateway.url + "/v1/chat/completions", headers=headers, json={
            "model": "picky", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 1})

    # A request scored, then rejected by its engine: it is never routed.
    rejected = next((f"alpha {i} " * 60, f"reused-{i}") for i in range(40)
                    if send(f"alpha {i} " * 60, f"reused-{i}").status_code == 400)
    served = "bravo " * 100  # once served, its prefix keeps it on the replica that serves
    assert any(send(served, f"warm-{i}").status_code == 200 for i in range(40))
    fresh = orjson.loads(send(served, "fresh", explain=True).headers["x-llmgw-route"])
    again = send(served, rejected[1], explain=True)
    assert again.headers["x-request-id"] == rejected[1]
    reused = orjson.loads(again.headers["x-llmgw-route"])
    assert reused["scores"]["prefix-cache"] == fresh["scores"]["prefix-cache"] == {
        "picky-0": 1.0, "picky-1": 0.0}
    dry = debug_route(gateway, {"model": "picky", "messages": [
        {"role": "user", "content": rejected[0]}]}).json()
    assert dry["scores"]["prefix-cache"] == {"picky-0": 0.0, "picky-1": 0.0}


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
