"""`llmgw up configs/local.yaml`, exactly as the README says, with the real embedded engine
(transformers + torch on CPU, the demo model), driven by the official openai SDK."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import (
    ROOT,
    Server,
    engine_counter,
    launched_engine_urls,
    llmgw_up,
    wait_until,
)

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Tell me about gateways."}]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Server]:
    server = llmgw_up("configs/local.yaml", timeout_s=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(gateway: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)


def engine_urls(gateway: Server) -> list[str]:
    urls = launched_engine_urls(gateway)
    assert len(urls) == 2, gateway.output()[-2000:]
    return urls


def test_serves_demo_with_two_replicas(client: openai.OpenAI, gateway: Server) -> None:
    assert [m.id for m in client.models.list()] == ["demo"]
    replicas = set()
    # Prompts that share no prefix find no replica cached, so idle replicas tie and each
    # gateway breaks ties at random: 20 requests all going to one replica would happen
    # once in a million runs.
    for i in range(20):
        raw = client.chat.completions.with_raw_response.create(
            model="demo", max_tokens=4,
            messages=[{"role": "user", "content": f"{i} " + "fresh words " * 20}])
        replicas.add(raw.headers["x-llmgw-replica"])
    assert replicas == {"demo-0", "demo-1"}


def test_greedy_is_deterministic_and_streaming_matches(client: openai.OpenAI) -> None:
    args = {"model": "demo", "messages": MESSAGES, "max_tokens": 24, "temperature": 0}
    first = client.chat.completions.create(**args)  # type: ignore[call-overload]
    second = client.chat.completions.create(**args)  # type: ignore[call-overload]
    assert first.choices[0].message.content == second.choices[0].message.content
    chunks = list(client.chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}))  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == first.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == first.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == first.usage.prompt_tokens


def test_fixed_length_outputs_with_ignore_eos(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo", messages=MESSAGES, max_tokens=40,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True, "min_tokens": 40})
    assert reply.usage is not None and reply.usage.completion_tokens == 40
    assert reply.choices[0].finish_reason == "length"


def test_completions_endpoint(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="demo", prompt="def main():", max_tokens=8,
                                      temperature=0)
    assert reply.usage is not None and 1 <= reply.usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="demo", prompt="def main():", max_tokens=8, temperature=0, stream=True)
        if c.choices)
    assert streamed == reply.choices[0].text


def test_seeded_sampling_reproduces(client: openai.OpenAI) -> None:
    args = {"model": "demo", "messages": MESSAGES, "max_tokens": 16, "temperature": 1.0,
            "seed": 1234}
    a = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    b = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    assert a == b


def test_engine_rejection_reaches_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="demo", messages=MESSAGES, n=2)  # type: ignore[arg-type]
    assert info.value.body is not None


@pytest.mark.parametrize("stream", [True, False], ids=["mid-stream", "non-streaming"])
def test_disconnect_aborts_the_embedded_engine_request(gateway: Server, stream: bool) -> None:
    body = httpx.Request("POST", "/", json={
        "model": "demo", "messages": MESSAGES, "max_tokens": 2000, "stream": stream,
        "ignore_eos": True}).content
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     + f"content-length: {len(body)}\r\n\r\n".encode() + body)
        if stream:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        urls = engine_urls(gateway)
        wait_until(lambda: sum(engine_counter(u, "llmgw_engine_requests_running")
                               for u in urls) == 1, 60, "the engine to start the request")
    wait_until(lambda: sum(engine_counter(u, "llmgw_engine_requests_running")
                           for u in urls) == 0, 30, "the engine to abort the request")


def test_gateway_metrics_after_traffic(gateway: Server, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="demo", messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    text = httpx.get(gateway.url + "/metrics").text
    assert 'llmgw_requests_total{endpoint="chat",model="demo",status="200"}' in text
    assert 'llmgw_replica_healthy{model="demo",replica="demo-1"} 1.0' in text


def test_readme_commands_are_the_ones_tested() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make up" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert "llmgw up $(CONFIG)" in makefile and "CONFIG  ?= configs/local.yaml" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert Path(ROOT / "configs" / "local.yaml").exists()
