"""The gateway in front of SGLang, through ``engine: sglang``.

SGLang needs a GPU, so the engines here are tests/fakes/sglang_server.py: a fake that
follows SGLang's HTTP protocol (routes, chunk and error shapes, metric names, and how it
aborts a request whose client left), driven through a real gateway process with the
official ``openai`` SDK.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import aiohttp
import httpx
import openai
import orjson
import pytest

from llmgw.engines.http1.pool import HTTPClient
from llmgw.engines.sglang import SGLangEngine, zero_missing_hits
from llmgw.engines.stats import parse_samples, stats_from_text
from llmgw.types import EngineStats
from tests.support import Server, free_port, start_gateway, wait_until

SERVED = "Qwen/Qwen2.5-7B-Instruct"
MESSAGES = [{"role": "user", "content": "hi"}]
TOO_LONG = (
    "Requested token count exceeds the model's maximum context length of 4096 "
    "tokens. You requested a total of"
)


def start_fake_sglang(*args: str) -> Server:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "tests.fakes.sglang_server",
        "--port",
        str(port),
        "--served-model-name",
        SERVED,
        "--token-delay-ms",
        "20",
        "--enable-metrics",
        *args,
    ]
    return Server(argv, port, "/v1/models", timeout_s=30)


def sample(server: Server, name: str) -> float:
    """One SGLang metric, summed over label sets; 0 before SGLang creates the series."""
    return parse_samples(httpx.get(server.url + "/metrics", timeout=5).text).get(name, 0.0)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    servers = {"sglang": start_fake_sglang()}
    try:
        # As SGLang 0.5.18-0.5.19: a cancelled stream is never aborted (sglang#36333).
        servers["sglang-0.5.18"] = start_fake_sglang("--disconnect-mode", "zombie")
        config = {
            # SGLang's /health generates a token and answers after ~1 s.
            "health": {"interval_s": 0.5, "timeout_s": 3, "stats_interval_s": 0.2},
            "models": [
                {
                    "name": "qwen",
                    "engine": "sglang",
                    "url": [servers["sglang"].url],
                    "served_model_name": SERVED,
                },
                {
                    "name": "qwen-0518",
                    "engine": "sglang",
                    "url": [servers["sglang-0.5.18"].url],
                    "served_model_name": SERVED,
                },
            ],
        }
        servers["gateway"] = start_gateway(config, tmp_path_factory.mktemp("sglang"))
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture
def client(fleet: dict[str, Server]) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet["gateway"].url + "/v1", api_key="x", max_retries=0)


# --- requests and answers ------------------------------------------------------------


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="qwen", messages=MESSAGES, max_tokens=5)
    choice = reply.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("tok0 tok1 tok2 tok3 tok4", "length")
    assert reply.usage is not None
    assert (reply.usage.completion_tokens, reply.usage.total_tokens) == (
        5,
        reply.usage.prompt_tokens + 5,
    )


def test_completions_non_streaming(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="qwen", prompt="one two three", max_tokens=3)
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == ("tok0 tok1 tok2", "length")
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 3)


def test_chat_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="qwen",
            messages=MESSAGES,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.completion_tokens, usage.total_tokens) == (4, usage.prompt_tokens + 4)


def test_stream_without_include_usage_gets_no_usage_chunk(client: openai.OpenAI) -> None:
    # The gateway asks SGLang for usage on every stream (for its token metrics) and drops
    # the usage chunk when the client did not ask for it.
    chunks = list(
        client.chat.completions.create(model="qwen", messages=MESSAGES, max_tokens=2, stream=True)
    )
    assert [c.usage for c in chunks] == [None] * len(chunks)
    assert all(c.choices for c in chunks)


def test_completions_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="qwen",
            prompt="one two",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 3)


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
def test_sglang_400_reaches_the_client_with_status_and_message(
    client: openai.OpenAI, stream: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="qwen", messages=MESSAGES, max_tokens=10_000, stream=stream
        )
    assert raised.value.status_code == 400
    assert isinstance(raised.value.body, dict)
    assert str(raised.value.body["message"]).startswith(TOO_LONG)


# --- aborts --------------------------------------------------------------------------


def _open_and_drop(url: str, body: dict[str, object], read_first: bool,
                   engine: Server | None = None) -> None:
    """Send a request on a raw socket and close it: mid-stream after the first bytes, or
    before any answer, once ``engine`` runs it (dropped sooner, the gateway may rightly
    never send it: its connection to the engine may still be opening)."""
    raw = orjson.dumps(body)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
            b"content-type: application/json\r\n"
            + f"content-length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        if read_first:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        if engine is not None:
            wait_until(lambda: sample(engine, "sglang:num_running_reqs") == 1, 10,
                       "the engine to run the request")


@pytest.mark.parametrize("stream", [True, False], ids=["mid-stream", "non-streaming"])
def test_client_disconnect_aborts_the_sglang_request(
    fleet: dict[str, Server], stream: bool
) -> None:
    engine = fleet["sglang"]
    aborted = sample(engine, "sglang:num_aborted_requests_total")
    _open_and_drop(
        fleet["gateway"].url,
        {"model": "qwen", "messages": MESSAGES, "max_tokens": 500, "stream": stream},
        read_first=stream,
        engine=None if stream else engine,
    )
    # Closing the upstream connection is what the gateway does; SGLang aborts 2 s after a
    # stream ends, and polls a non-streaming client every 50 tokens (1 s here).
    wait_until(
        lambda: (
            sample(engine, "sglang:num_running_reqs") == 0
            and sample(engine, "sglang:num_aborted_requests_total") == aborted + 1
        ),
        10,
        "SGLang to abort the abandoned request",
    )
    metrics = httpx.get(fleet["gateway"].url + "/metrics").text
    assert 'llmgw_replica_in_flight_requests{model="qwen",replica="qwen-0"} 0.0' in metrics


async def test_abort_before_close_stops_a_stream_on_sglang_0_5_18(fleet: dict[str, Server]) -> None:
    fake = fleet["sglang-0.5.18"]
    aborted = sample(fake, "sglang:num_aborted_requests_total")
    rid = "llmgw-" + os.urandom(8).hex()
    client = HTTPClient()
    async with aiohttp.ClientSession() as session:
        engine = SGLangEngine(fake.url, session, client)
        body = orjson.dumps(
            {
                "model": SERVED,
                "messages": MESSAGES,
                "max_tokens": 500,
                "stream": True,
                **engine.body_fields(rid),
            }
        )
        upstream = await engine.send("/v1/chat/completions", body)
        blocks = upstream.event_blocks()
        assert rid.encode() in await anext(blocks)
        assert await engine.abort(rid)
        await blocks.aclose()
        upstream.close()
    client.close()
    wait_until(
        lambda: (
            sample(fake, "sglang:num_running_reqs") == 0
            and sample(fake, "sglang:num_aborted_requests_total") == aborted + 1
        ),
        5,
        "SGLang to abort the stream",
    )


# --- engine stats --------------------------------------------------------------------

# The shape of SGLang 0.5's /metrics with --enable-metrics (numbers made up).
SGLANG_TEXT = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 7.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 2.0
sglang:token_usage{engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 0.31
sglang:cache_hit_rate{engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 0.9
sglang:gen_throughput{engine_type="unified",model_name="qwen",pp_rank="0",tp_rank="0"} 412.5
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="qwen"} 52210.0
# HELP sglang:cached_tokens_total Number of cached prompt tokens by source (device/host/storage).
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{cache_source="device",model_name="qwen"} 30000.0
sglang:cached_tokens_total{cache_source="host",model_name="qwen"} 1200.0
sglang:generation_tokens_total{model_name="qwen"} 9100.0
sglang:num_requests_total{model_name="qwen"} 310.0
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="qwen"} 200.0
sglang:time_to_first_token_seconds_sum{model_name="qwen"} 41.5
"""
_GAUGES = "\n".join(line for line in SGLANG_TEXT.splitlines() if "_total" not in line)
_NO_HITS_YET = "\n".join(line for line in SGLANG_TEXT.splitlines() if "cached_tokens" not in line)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SGLANG_TEXT,
            EngineStats(
                running=7,
                waiting=2,
                kv_usage=0.31,
                prefix_cache_hits=31200.0,
                prefix_cache_queries=52210.0,
            ),
        ),
        (
            _NO_HITS_YET,
            EngineStats(
                running=7,
                waiting=2,
                kv_usage=0.31,
                prefix_cache_hits=0.0,
                prefix_cache_queries=52210.0,
            ),
        ),
        (_GAUGES, EngineStats(running=7, waiting=2, kv_usage=0.31)),
    ],
    ids=["full", "no-cache-hit-yet", "no-request-finished-yet"],
)
def test_sglang_metrics_become_engine_stats(text: str, expected: EngineStats) -> None:
    assert zero_missing_hits(stats_from_text(text, SGLangEngine.stats_names)) == expected


def test_no_metrics_means_no_stats() -> None:
    assert zero_missing_hits(None) is None


async def test_stats_are_read_from_a_live_sglang(fleet: dict[str, Server]) -> None:
    fake = fleet["sglang"]
    httpx.post(fake.url + "/v1/completions", json={"model": SERVED, "prompt": "a b c"})
    async with aiohttp.ClientSession() as session:
        stats = await SGLangEngine(fake.url, session, HTTPClient()).stats()
    samples = parse_samples(httpx.get(fake.url + "/metrics").text)
    assert stats == EngineStats(
        running=0,
        waiting=0,
        kv_usage=0.0,
        prefix_cache_hits=samples.get("sglang:cached_tokens_total", 0.0),
        prefix_cache_queries=samples["sglang:prompt_tokens_total"],
    )


def test_gateway_metrics_show_the_sglang_replica_stats(fleet: dict[str, Server]) -> None:
    def scraped() -> bool:
        text = httpx.get(fleet["gateway"].url + "/metrics").text
        return 'llmgw_engine_requests_running{model="qwen",replica="qwen-0"} 0.0' in text

    wait_until(scraped, 10, "the stats loop to scrape the SGLang replica")


def test_client_disconnect_mid_stream_aborts_on_sglang_0_5_18(fleet: dict[str, Server]) -> None:
    engine = fleet["sglang-0.5.18"]
    _open_and_drop(
        fleet["gateway"].url,
        {"model": "qwen-0518", "messages": MESSAGES, "max_tokens": 300, "stream": True},
        read_first=True,
    )
    wait_until(
        lambda: sample(engine, "sglang:num_running_reqs") == 0,
        4,
        "SGLang 0.5.18 to stop the abandoned stream",
    )
