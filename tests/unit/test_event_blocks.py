"""SSE framing from a real HTTP response: events split across reads, CRLF line ends."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from llmgw.engines.http1.pool import HTTPClient
from llmgw.engines.openai_http import OpenAIHTTPEngine


async def serve(pieces: list[bytes]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0)  # let each piece go out as its own read
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([b"data: a\n\n", b"data: b\n\n"], [b"data: a\n\n", b"data: b\n\n"]),
        ([b"data: a\n\ndata: b\n\n"], [b"data: a\n\ndata: b\n\n"]),
        ([b"data: a\n", b"\ndata: b\n\nda", b"ta: c\n\n"],
         [b"data: a\n\n", b"data: b\n\n", b"data: c\n\n"]),
        ([b"data: a\r\n\r\n", b"data: b\r\n\r\n"], [b"data: a\n\n", b"data: b\n\n"]),
        ([b"data: a\r\n\r", b"\ndata: b\r\n\r\n"], [b"data: a\n\n", b"data: b\n\n"]),
        ([b"data: a\n\ndata: tail-without-blank-line"],
         [b"data: a\n\n", b"data: tail-without-blank-line\n\n"]),
    ],
    ids=["one-per-read", "two-in-one-read", "split-mid-event", "crlf", "crlf-split",
         "unterminated-tail"],
)
async def test_event_blocks(pieces: list[bytes], expected: list[bytes]) -> None:
    runner, url = await serve(pieces)
    try:
        client = HTTPClient()
        async with aiohttp.ClientSession() as session:
            engine = OpenAIHTTPEngine(url, session, client)
            upstream = await engine.send("/v1/chat/completions", b"{}")
            blocks = [block async for block in upstream.event_blocks()]
            upstream.close()
        client.close()
        assert b"".join(blocks) == b"".join(expected)
        assert all(block.endswith(b"\n\n") for block in blocks)
    finally:
        await runner.cleanup()
