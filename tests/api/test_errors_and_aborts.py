"""Bad input, failing engines, timeouts and disconnects: every answer OpenAI-shaped, and
every abandoned request aborted inside the engine."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Iterator

import httpx
import openai
import pytest

from llmgw.api.header_limit import MAX_HEADER_BYTES
from llmgw.protocol import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS
from tests.support import (
    Server,
    engine_counter,
    free_port,
    start_fake_engine,
    start_gateway,
    wait_until,
)

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    engines = {
        "ok": start_fake_engine(),
        "slow": start_fake_engine("--token-delay-ms", "20"),
        "broken": start_fake_engine("--fail-status", "500"),
        "rejects": start_fake_engine("--fail-status", "422"),
    }
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = {
        "server": {"max_body_bytes": 4096},
        "health": {"interval_s": 0.5},
        "models": [
            {"name": "fake", "engine": "openai", "url": [engines["ok"].url]},
            {"name": "slow", "engine": "openai", "url": [engines["slow"].url]},
            {"name": "timed", "engine": "openai", "url": [engines["slow"].url],
             "timeouts": {"request_s": 0.3}},
            {"name": "broken", "engine": "openai", "url": [engines["broken"].url],
             "max_attempts": 1},
            {"name": "rejects", "engine": "openai", "url": [engines["rejects"].url]},
            {"name": "dead", "engine": "openai", "url": [dead_url]},
            {"name": "failover", "engine": "openai", "url": [dead_url, engines["ok"].url],
             "routing": "round-robin"},
        ],
    }
    try:
        # /ready stays 503 here on purpose: the "dead" model has no healthy replica.
        engines["gateway"] = start_gateway(config, tmp_path_factory.mktemp("errors"),
                                           ready_path="/health")
        yield engines
    finally:
        for server in engines.values():
            server.stop()


def post(fleet: dict[str, Server], body: bytes | dict[str, object],
         path: str = "/v1/chat/completions") -> httpx.Response:
    url = fleet["gateway"].url + path
    if isinstance(body, bytes):
        return httpx.post(url, content=body, headers={"content-type": "application/json"})
    return httpx.post(url, json=body, timeout=30)


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, None),
        (b"[1, 2]", 400, None, None),
        ({"messages": MESSAGES}, 400, "model", None),
        ({"model": "fake"}, 400, "messages", None),
        ({"model": "fake", "messages": []}, 400, "messages", None),
        ({"model": "fake", "messages": MESSAGES, "max_tokens": "ten"}, 400, "max_tokens", None),
        ({"model": "fake", "messages": MESSAGES, "stream": "yes"}, 400, "stream", None),
        ({"model": "fake", "messages": [{"content": "no role"}]}, 400, "messages.0.role", None),
        ({"model": "nope", "messages": MESSAGES}, 404, "model", "model_not_found"),
        ({"model": "fake", "messages": [{"role": "user", "content": "x" * 5000}]}, 413, None,
         "payload_too_large"),
        ({"model": "fake", "messages": MESSAGES, "stop": ["s"] * (MAX_STOP_STRINGS + 1)}, 400,
         "stop", None),
        ({"model": "fake", "messages": MESSAGES, "stop": "s" * (MAX_STOP_STRING_CHARS + 1)}, 400,
         "stop", None),
        ({"model": "fake", "messages": MESSAGES, "stop": ["ok", 5]}, 400, "stop", None),
        ({"model": "fake", "prompt": "p", "stop": {"s": 1}}, 400, "stop", None),
    ],
    ids=["bad-json", "not-object", "no-model", "no-messages", "empty-messages", "wrong-type",
         "stream-not-bool", "nested-field", "unknown-model", "too-large", "too-many-stops",
         "stop-too-long", "stop-not-text", "stop-not-a-list"],
)
def test_bad_input_gets_openai_error(fleet: dict[str, Server], body: bytes | dict[str, object],
                                     status: int, param: str | None, code: str | None) -> None:
    path = "/v1/completions" if isinstance(body, dict) and "prompt" in body else None
    response = post(fleet, body, *([path] if path else []))
    assert response.status_code == status
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code)
    assert "Traceback" not in str(error["message"])


def test_stops_within_the_bounds_reach_the_engine(fleet: dict[str, Server]) -> None:
    for stop in (["s"] * MAX_STOP_STRINGS, "s" * MAX_STOP_STRING_CHARS, None, []):
        response = post(fleet, {"model": "fake", "messages": MESSAGES, "max_tokens": 1,
                                "stop": stop})
        assert response.status_code == 200, response.text


def requests_by_status(fleet: dict[str, Server], model: str) -> Counter[str]:
    """llmgw_requests_total for ``model``, summed over endpoints: status -> count."""
    counts: Counter[str] = Counter()
    for line in httpx.get(fleet["gateway"].url + "/metrics").text.splitlines():
        if line.startswith("llmgw_requests_total{") and f'model="{model}"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def gateway_sample(fleet: dict[str, Server], prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1])
               for line in httpx.get(fleet["gateway"].url + "/metrics").text.splitlines()
               if line.startswith(prefix))


def nested(depth: int, stream: bool) -> bytes:
    return (b'{"model":"fake","messages":[{"role":"user","content":"hi"}],"max_tokens":1,'
            + b'"stream":' + (b"true" if stream else b"false")
            + b',"x":' + b"[" * depth + b"]" * depth + b"}")


@pytest.mark.parametrize(
    ("depth", "stream", "status", "model"),
    [(300, True, 400, "fake"), (300, False, 200, "fake"), (2000, False, 400, "unknown")],
    ids=["rewritten-stream", "forwarded-as-is", "deeper-than-the-parser-takes"],
)
def test_a_deeply_nested_body_is_answered_and_counted_as_answered(
        fleet: dict[str, Server], depth: int, stream: bool, status: int, model: str) -> None:
    # A stream the engine must be asked for usage on is re-serialised by the gateway
    # (orjson writes at most 254 levels, though it reads 1024): a clean 400, not a 500.
    # Deeper than orjson reads, the body names no model the gateway could trust.
    before = requests_by_status(fleet, model)
    response = post(fleet, nested(depth, stream))
    assert response.status_code == status, response.text
    if status != 200:
        assert error_of(response)["type"] == "invalid_request_error"
    after = requests_by_status(fleet, model)
    assert after - before == Counter({str(status): 1})


def test_a_bad_request_for_a_real_model_is_counted_under_that_model(
        fleet: dict[str, Server]) -> None:
    before = requests_by_status(fleet, "fake"), requests_by_status(fleet, "unknown")
    assert post(fleet, {"model": "fake", "messages": MESSAGES, "stream": "yes"}).status_code \
        == 400
    assert post(fleet, {"model": "fake", "messages": "hi"}).status_code == 400
    # Labels stay bounded: a name that is no configured model is counted as "unknown".
    assert post(fleet, {"model": "not-configured", "messages": "hi"}).status_code == 400
    assert post(fleet, {"model": ["fake"], "messages": MESSAGES}).status_code == 400
    after = requests_by_status(fleet, "fake"), requests_by_status(fleet, "unknown")
    assert (after[0] - before[0], after[1] - before[1]) == (
        Counter({"400": 2}), Counter({"400": 2}))


def test_oversized_request_headers_are_431_on_every_route(fleet: dict[str, Server]) -> None:
    big = {"x-session-id": "s" * (MAX_HEADER_BYTES + 1)}
    before = requests_by_status(fleet, "unknown")
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/health"),
                         ("GET", "/v1/models"), ("POST", "/debug/route")):
        response = httpx.request(method, fleet["gateway"].url + path, headers=big,
                                 json={"model": "fake", "messages": MESSAGES})
        assert response.status_code == 431, (path, response.text)
        assert error_of(response)["type"] == "invalid_request_error"
    assert requests_by_status(fleet, "unknown") - before == Counter({"431": 1})
    fits = {"x-session-id": "s" * (MAX_HEADER_BYTES // 2)}
    assert httpx.post(fleet["gateway"].url + "/v1/chat/completions", headers=fits, json={
        "model": "fake", "messages": MESSAGES, "max_tokens": 1}).status_code == 200


def test_no_healthy_replica_is_503_with_retry_after(fleet: dict[str, Server]) -> None:
    response = post(fleet, {"model": "dead", "messages": MESSAGES})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert error_of(response)["code"] == "no_healthy_replica"


def test_engine_failure_is_502(fleet: dict[str, Server]) -> None:
    response = post(fleet, {"model": "broken", "messages": MESSAGES})
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_error" and "500" in str(error["message"])


def test_engine_4xx_passes_through_with_status_and_message(fleet: dict[str, Server]) -> None:
    response = post(fleet, {"model": "rejects", "messages": MESSAGES})
    assert response.status_code == 422
    assert error_of(response)["message"] == "injected failure"


def test_unreachable_replica_fails_over_to_the_next(fleet: dict[str, Server]) -> None:
    # The health loop already marked the dead one down; requests never see it.
    for _ in range(4):
        response = post(fleet, {"model": "failover", "messages": MESSAGES, "max_tokens": 1})
        assert response.status_code == 200
        assert response.headers["x-llmgw-replica"] == "failover-1"


def test_sdk_raises_the_matching_exception_classes(fleet: dict[str, Server]) -> None:
    client = openai.OpenAI(base_url=fleet["gateway"].url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="fake", messages=[])
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="dead", messages=MESSAGES)  # type: ignore[arg-type]


def test_request_timeout_non_streaming_is_504(fleet: dict[str, Server]) -> None:
    response = post(fleet, {"model": "timed", "messages": MESSAGES, "max_tokens": 100})
    assert response.status_code == 504
    assert error_of(response)["code"] == "upstream_timeout"
    wait_until(lambda: engine_counter(fleet["slow"].url, "llmgw_engine_requests_running") == 0,
               10, "the engine to drop the timed-out request")


def test_request_timeout_mid_stream_ends_with_error_event_and_done(
    fleet: dict[str, Server]
) -> None:
    body = {"model": "timed", "messages": MESSAGES, "max_tokens": 100, "stream": True}
    with httpx.stream("POST", fleet["gateway"].url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [e for e in r.read().split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert b'"code":"upstream_timeout"' in events[-2]
    assert len(events) > 3  # some tokens were relayed before the limit hit


def test_a_responses_stream_cut_by_its_timeout_ends_with_the_error_event(
    fleet: dict[str, Server]
) -> None:
    """Responses streams end with their last event: no [DONE] after the error either; the
    SDK raises the error it reads."""
    client = openai.OpenAI(base_url=fleet["gateway"].url + "/v1", api_key="x", max_retries=0)
    kinds: list[str] = []
    with pytest.raises(openai.APIError, match="time limit mid-stream"), \
            client.responses.stream(model="timed", input="hi", max_output_tokens=100) as stream:
        kinds.extend(event.type for event in stream)
    assert "response.output_text.delta" in kinds  # tokens were relayed before the limit
    body = {"model": "timed", "input": "hi", "max_output_tokens": 100, "stream": True}
    with httpx.stream("POST", fleet["gateway"].url + "/v1/responses", json=body) as r:
        events = [e for e in r.read().split(b"\n\n") if e]
    assert b'"code":"upstream_timeout"' in events[-1]
    assert events[-1].startswith(b"data: {\"error\"")


def test_long_stream_is_not_cut_without_a_configured_timeout(fleet: dict[str, Server]) -> None:
    # 60 tokens at 20 ms each: longer than the "timed" model's limit, but "slow" has none.
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 60, "stream": True}
    with httpx.stream("POST", fleet["gateway"].url + "/v1/chat/completions", json=body) as r:
        events = [e for e in r.read().split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and b"error" not in b"".join(events)
    assert sum(b'"content":"tok' in e for e in events) == 60


def _open_and_drop(url: str, body: bytes, read_first: bool,
                   engine_url: str | None = None) -> None:
    """Send a request on a raw socket and close it: mid-stream after the first bytes, or
    before any answer (once ``engine_url`` runs it, when given: a client that leaves
    before the request reached an engine has nothing to abort)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        if read_first:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        elif engine_url is not None:
            wait_until(lambda: engine_counter(engine_url, "llmgw_engine_requests_running") == 1,
                       10, "the engine to run the request")


@pytest.mark.parametrize("stream", [True, False], ids=["mid-stream", "non-streaming"])
def test_client_disconnect_aborts_the_engine_request(fleet: dict[str, Server],
                                                     stream: bool) -> None:
    engine = fleet["slow"]
    aborted_before = engine_counter(engine.url, "llmgw_engine_requests_aborted_total")
    body = httpx.Request("POST", "/", json={
        "model": "slow", "messages": MESSAGES, "max_tokens": 500, "stream": stream}).content
    disconnects = 'llmgw_client_disconnects_total{model="slow"}'
    disconnects_before = gateway_sample(fleet, disconnects)
    before = requests_by_status(fleet, "slow")
    _open_and_drop(fleet["gateway"].url, body, read_first=stream, engine_url=engine.url)
    wait_until(lambda: engine_counter(engine.url, "llmgw_engine_requests_aborted_total")
               == aborted_before + 1, 10, "the engine to see the abort")
    # Every request the client left is one disconnect and one 499, streamed or not.
    wait_until(lambda: gateway_sample(fleet, disconnects) == disconnects_before + 1, 10,
               "the gateway to count the disconnect")
    assert requests_by_status(fleet, "slow") - before == Counter({"499": 1})
    assert engine_counter(engine.url, "llmgw_engine_requests_running") == 0
    gateway_metrics = httpx.get(fleet["gateway"].url + "/metrics").text
    assert 'llmgw_replica_in_flight_requests{model="slow",replica="slow-0"} 0.0' in gateway_metrics


async def test_many_concurrent_disconnects_leave_nothing_running(
    fleet: dict[str, Server]
) -> None:
    engine = fleet["slow"]
    body = {"model": "slow", "messages": MESSAGES, "max_tokens": 500, "stream": True}
    async with httpx.AsyncClient(base_url=fleet["gateway"].url, timeout=30) as http:
        async def read_two_events() -> None:
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_raw():
                    return

        await asyncio.gather(*(read_two_events() for _ in range(20)))
    wait_until(lambda: engine_counter(engine.url, "llmgw_engine_requests_running") == 0,
               10, "all 20 engine requests to be aborted")
