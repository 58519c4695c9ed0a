"""The OpenAI surface through the official SDK: shapes, streaming, usage, pass-through."""

from __future__ import annotations

import concurrent.futures

import httpx
import openai
import orjson

from tests.support import Server, wait_until

MESSAGES = [{"role": "user", "content": "say something"}]


def test_models_lists_every_served_model(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["fake", "renamed"]


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=5)
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert reply.usage is not None
    assert (reply.usage.completion_tokens, reply.usage.total_tokens) == (
        5, reply.usage.prompt_tokens + 5)


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="fake", messages=MESSAGES, max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0]
    assert usage_chunks[0].usage.completion_tokens == 4  # type: ignore[union-attr]


def test_stream_without_include_usage_gets_no_usage_chunk(client: openai.OpenAI) -> None:
    # The gateway asks the engine for usage (for its metrics) but must not show it.
    chunks = list(client.chat.completions.create(
        model="fake", messages=MESSAGES, max_tokens=3, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_completions_stream_and_not(client: openai.OpenAI) -> None:
    full = client.completions.create(model="fake", prompt="a b c", max_tokens=3)
    assert full.choices[0].text == "tok0 tok1 tok2"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="fake", prompt="a b c", max_tokens=3, stream=True) if c.choices)
    assert streamed == full.choices[0].text


def test_raw_sse_ends_with_done(gateway: Server) -> None:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={
        "model": "fake", "messages": MESSAGES, "max_tokens": 2, "stream": True,
    }) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read()
    events = [e for e in body.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-1])


def test_tools_response_format_and_extra_body_reach_the_engine_unchanged(
    client: openai.OpenAI, engines: list[Server]
) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    extra = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1,
             "chat_template_kwargs": {"x": 1}, "structured_outputs": {"json": {"type": "object"}}}
    raw = client.chat.completions.with_raw_response.create(
        model="fake", messages=MESSAGES, max_tokens=1, tools=tools,  # type: ignore[arg-type]
        tool_choice="auto", response_format={"type": "json_object"}, extra_body=extra)
    replica = raw.headers["x-llmgw-replica"]
    engine = engines[int(replica.rsplit("-", 1)[1])]
    seen = orjson.loads(httpx.get(engine.url + "/fake/last_request").content)
    assert seen["tools"] == tools
    assert seen["tool_choice"] == "auto"
    assert seen["response_format"] == {"type": "json_object"}
    assert {k: seen[k] for k in extra} == extra


def test_served_model_name_is_rewritten_for_the_engine(
    client: openai.OpenAI, engines: list[Server]
) -> None:
    reply = client.chat.completions.with_raw_response.create(
        model="renamed", messages=MESSAGES, max_tokens=1)
    assert reply.headers["x-llmgw-replica"] == "renamed-0"
    assert orjson.loads(httpx.get(engines[0].url + "/fake/last_request").content)[
        "model"] == "fake"


def test_every_response_names_its_replica_and_load_is_spread(client: openai.OpenAI) -> None:
    seen = set()
    for _ in range(20):
        raw = client.chat.completions.with_raw_response.create(
            model="fake", messages=MESSAGES, max_tokens=1)
        seen.add(raw.headers["x-llmgw-replica"])
        assert raw.headers["x-request-id"]
    # Sequential requests all see zero load; random tie-breaks share them out.
    assert seen == {"fake-0", "fake-1"}


def test_metrics_count_requests_tokens_and_replicas(gateway: Server,
                                                    client: openai.OpenAI) -> None:
    list(client.chat.completions.create(model="fake", messages=MESSAGES, max_tokens=7,
                                        stream=True))
    text = httpx.get(gateway.url + "/metrics").text
    for name in ("llmgw_requests_total{endpoint=\"chat\",model=\"fake\",status=\"200\"}",
                 "llmgw_completion_tokens_total{model=\"fake\"}",
                 "llmgw_time_to_first_token_seconds_count{model=\"fake\"}",
                 "llmgw_inter_token_latency_seconds_count{model=\"fake\"}",
                 "llmgw_replica_in_flight_requests{model=\"fake\",replica=\"fake-0\"} 0.0",
                 "llmgw_replica_healthy{model=\"fake\",replica=\"fake-1\"} 1.0",
                 "llmgw_routing_decisions_total{model=\"fake\",policy=\"prefix-aware\""):
        assert name in text, name


def test_health_and_ready(gateway: Server) -> None:
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/ready").json() == {
        "ready": True, "models": {"fake": True, "renamed": True}}


def test_engine_stats_are_scraped_into_gateway_metrics(gateway: Server) -> None:
    def scraped() -> bool:
        text = httpx.get(gateway.url + "/metrics").text
        return all(f'llmgw_engine_requests_running{{model="fake",replica="fake-{i}"}} 0.0'
                   in text for i in range(2))

    wait_until(scraped, 10, "the stats loop to scrape both fake engines")


def test_open_requests_count_as_load_streaming_or_not(gateway: Server) -> None:
    """A request in flight on one replica, streamed or not, sends the next elsewhere
    (least-load sees the gateway's own in-flight count at once, no scrape needed)."""
    body = {"model": "fake", "messages": MESSAGES, "max_tokens": 400}  # ~0.8 s of tokens
    with httpx.stream("POST", gateway.url + "/v1/chat/completions",
                      json={**body, "stream": True}) as streaming:
        busy = streaming.headers["x-llmgw-replica"]
        # Held: an iterator dropped after one chunk is closed, and the stream with it.
        chunks = streaming.iter_raw()
        next(chunks)
        for _ in range(3):
            other = httpx.post(gateway.url + "/v1/chat/completions",
                               json={**body, "max_tokens": 1})
            assert other.headers["x-llmgw-replica"] != busy
    with httpx.Client(base_url=gateway.url, timeout=30) as http, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(http.post, "/v1/chat/completions", json=body)
        wait_until(lambda: 'llmgw_replica_in_flight_requests{model="fake",replica="fake-0"} 1.0'
                   in (text := http.get("/metrics").text) or
                   'llmgw_replica_in_flight_requests{model="fake",replica="fake-1"} 1.0' in text,
                   10, "the non-streaming request to be in flight")
        quick = http.post("/v1/chat/completions", json={**body, "max_tokens": 1})
        assert quick.headers["x-llmgw-replica"] != slow.result().headers["x-llmgw-replica"]
