"""A non-streaming answer whose engine breaks off after the headers (killed between its
headers and its body's end: a Ray node lost under load did this) goes to another
replica, and the client never sees it; one whose body outlives the request's deadline is
a 504 with the engine connection closed; a stream cut mid-way ends with an error event
and counts against its replica as a reset. Raw scripted engines, byte by byte, behind an
in-process gateway; the real openai client, its own retries off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest

from llmgw.api.app import create_app
from llmgw.build import Gateway
from llmgw.config import GatewayConfig
from tests.engines.test_http1_client import Scripted, request_head
from tests.support import in_process_gateway

COMPLETION = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "whole"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"


async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await request_head(reader):
        writer.write(HEAD % len(COMPLETION) + COMPLETION)


async def dies_mid_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The headers and part of the body, then the connection closes (Scripted closes it
    when the script ends): as an engine killed while sending its answer."""
    if await request_head(reader):
        writer.write(HEAD % len(COMPLETION) + COMPLETION[:10])
        await writer.drain()


def gateway_for(*urls: str, health: dict[str, object] | None = None,
                **model: object) -> Gateway:
    return in_process_gateway(GatewayConfig.model_validate({"health": health or {}, "models": [
        {"name": "m", "engine": "openai", "routing": "round-robin", "url": list(urls),
         **model}]}))


@contextlib.asynccontextmanager
async def openai_client(gateway: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    """A client of the gateway; the gateway (and its engine connections) closed after,
    before the scripted engines stop."""
    transport = httpx.ASGITransport(app=create_app(gateway))
    try:
        async with openai.AsyncOpenAI(
                base_url="http://gw/v1", api_key="none", max_retries=0,
                http_client=httpx.AsyncClient(transport=transport)) as client:
            yield client
    finally:
        await gateway.close()


def samples(gateway: Gateway, prefix: str) -> dict[str, float]:
    text = gateway.metrics.exposition().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


async def test_an_answer_cut_after_its_headers_is_sent_to_another_replica() -> None:
    async with Scripted(dies_mid_answer) as broken, Scripted(answers) as sound:
        gateway = gateway_for(broken.url, sound.url)
        served = []
        async with openai_client(gateway) as client:
            for _ in range(4):  # round-robin: two of them try the broken replica first
                raw = await client.chat.completions.with_raw_response.create(
                    model="m", messages=[{"role": "user", "content": "hi"}])
                served.append(raw.headers["x-llmgw-replica"])
                assert raw.parse().choices[0].message.content == "whole"
    assert broken.connections >= 1
    assert len(set(served)) == 1  # every answer came from the sound replica
    retried = samples(gateway, "llmgw_upstream_retries_total{")
    assert sum(retried.values()) == broken.connections, retried
    assert samples(gateway, "llmgw_requests_total{") == {
        'llmgw_requests_total{endpoint="chat",model="m",status="200"}': 4.0}


async def test_an_answer_slower_than_the_deadline_is_a_504_and_its_connection_closed(
        ) -> None:
    dropped = asyncio.Event()

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await request_head(reader):
            writer.write(HEAD % len(COMPLETION) + COMPLETION[:10])
            await stalled.until_closed(reader)
            dropped.set()

    async with Scripted(stalls) as stalled:
        gateway = gateway_for(stalled.url, timeouts={"request_s": 0.5})
        async with openai_client(gateway) as client:
            with pytest.raises(openai.APIStatusError) as failed:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "hi"}])
            assert failed.value.status_code == 504
            # The gateway dropped the engine's connection while it still serves.
            await asyncio.wait_for(dropped.wait(), 10)


CHUNK = orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                      "choices": [{"index": 0, "delta": {"content": "par"},
                                   "finish_reason": None}]})


async def stream_cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A stream's headers and first event, then the connection closes."""
    if await request_head(reader):
        event = b"data: %s\n\n" % CHUNK
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()


async def test_a_stream_cut_mid_way_ends_with_an_error_and_counts_as_a_reset() -> None:
    async with Scripted(stream_cut) as one, Scripted(stream_cut) as other:
        # One failure ejects; of two replicas, one may be out.
        gateway = gateway_for(one.url, other.url, health={"outlier": {
            "consecutive_failures": 1, "max_ejected_percent": 50}})
        async with openai_client(gateway) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
            served = raw.headers["x-llmgw-replica"]
            with pytest.raises(openai.APIError, match="engine stream broke"):
                async for _ in raw.parse():
                    pass
    assert samples(gateway, "llmgw_replica_ejections_total{") == {
        f'llmgw_replica_ejections_total{{model="m",reason="reset",replica="{served}"}}': 1.0}
