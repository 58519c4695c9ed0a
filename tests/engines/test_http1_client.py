"""llmgw.engines.http1 against real loopback servers: the fake engine (uvicorn, as vLLM
and SGLang serve) and raw asyncio servers scripted byte by byte for the edge cases."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from llmgw.engines.http1.connection import MAX_HEAD_BYTES, ResponseBroken
from llmgw.engines.http1.pool import ConnectFailed, HTTPClient, OriginPool
from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.errors import UpstreamDisconnected, UpstreamError, UpstreamUnreachable
from tests.api.test_tls import self_signed
from tests.support import Server, free_port, start_fake_engine

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """A raw HTTP server: ``handler`` answers each connection, byte for byte."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed_by_client = 0  # connections whose client closed them
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:  # the handler's script is over: the server closes
            writer.close()

    async def until_closed(self, reader: asyncio.StreamReader) -> None:
        """Wait for the client to drop the connection, and count it."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.closed_by_client += 1


async def request_head(reader: asyncio.StreamReader) -> bool:
    """Read one request (head and its Content-Length body); False at EOF."""
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return False
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return True


async def answer_each(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: list[bytes]
) -> None:
    for reply in replies:
        try:
            if not await request_head(reader):
                return
        except asyncio.IncompleteReadError:
            return
        writer.write(reply)
        await writer.drain()


@pytest.fixture
async def client() -> AsyncIterator[HTTPClient]:
    http = HTTPClient()
    yield http
    http.close()


async def post(pool: OriginPool, body: bytes = b"{}") -> bytes:
    response = await pool.post("/v1/completions", body)
    return await response.read()


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def test_each_request_carries_its_own_path_length_and_body(client: HTTPClient) -> None:
    """Heads are kept per path: requests to several paths of an engine under a path
    prefix, one connection, each with its own request line, length and body."""
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(head + await reader.readexactly(length))
            writer.write(OK)
            await writer.drain()

    async with Scripted(record) as server:
        pool = client.pool(server.url + "/engine/")
        for path, body in [("/v1/a", b"{}"), ("/v1/bb", b'{"x":12345}'), ("/v1/a", b"[1]")]:
            response = await pool.post(path, body, b"x-extra: 1\r\n")
            assert await response.read() == b"ok"
        host = server.url.removeprefix("http://").encode()
        assert seen == [
            b"POST /engine%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nx-extra: 1\r\n\r\n%s" % (path, host, len(body), body)
            for path, body in [(b"/v1/a", b"{}"), (b"/v1/bb", b'{"x":12345}'), (b"/v1/a", b"[1]")]
        ]
        assert server.connections == 1


@pytest.mark.parametrize("cut", [1, 3, 7, 1000], ids=["1-byte", "3-bytes", "7-bytes", "whole"])
async def test_a_chunked_body_arrives_whole_however_its_bytes_are_cut(
    client: HTTPClient, cut: int
) -> None:
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
        [b"data: a\n\n", b"data: b", b"\n\n", b"x" * 300]
    )

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # twice on one connection: the parser is reused correctly
            await request_head(reader)
            for start in range(0, len(wire), cut):
                writer.write(wire[start : start + cut])
                await writer.drain()

    async with Scripted(dribble) as server:
        pool = client.pool(server.url)
        for _ in range(2):
            assert await post(pool) == b"data: a\n\ndata: b\n\n" + b"x" * 300
    assert server.connections == 1


async def test_each_read_is_one_chunk_however_many_chunks_it_frames(client: HTTPClient) -> None:
    release = asyncio.Event()

    async def two_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\na1\r\n2\r\na2\r\n")
        await release.wait()
        writer.write(b"2\r\nb1\r\n0\r\n\r\n")

    async with Scripted(two_reads) as server:
        response = await client.pool(server.url).post("/x", b"{}")
        assert await response.chunk() == b"a1a2"
        release.set()
        assert await response.chunk() == b"b1"
        assert await response.chunk() == b""


async def test_connections_are_reused_and_an_engine_closed_one_is_not(client: HTTPClient) -> None:
    async def two_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [OK, OK])
        writer.close()  # a keep-alive connection the server ends between requests

    async with Scripted(two_then_close) as server:
        pool = client.pool(server.url)
        assert [await post(pool) for _ in range(2)] == [b"ok", b"ok"]
        assert server.connections == 1
        await asyncio.wait_for(wait_for(lambda: pool._idle[-1].closed), 5)
        assert await post(pool) == b"ok"
        assert server.connections == 2


async def test_connection_close_in_the_answer_is_honoured(client: HTTPClient) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [closing])

    async with Scripted(once) as server:
        pool = client.pool(server.url)
        assert [await post(pool) for _ in range(2)] == [b"ok", b"ok"]
        assert server.connections == 2


async def test_a_body_that_runs_to_eof_ends_there(client: HTTPClient) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()
        writer.close()

    async with Scripted(until_close) as server:
        assert await post(client.pool(server.url)) == b"all of it"


def stale_after(first: int) -> Handler:
    """Answers ``first`` requests, then reads the next and closes without a byte: the race
    of an engine closing an idle keep-alive connection as a request arrives on it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [OK] * first)
        await request_head(reader)
        writer.close()

    return handler


async def test_a_request_on_a_stale_reused_connection_is_sent_once_more(client: HTTPClient) -> None:
    calls = 0

    async def stale_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        await (stale_after(1) if calls == 1 else stale_after(5))(reader, writer)

    async with Scripted(stale_then_ok) as server:
        pool = client.pool(server.url)
        assert await post(pool) == b"ok"
        assert await post(pool) == b"ok"  # the first connection went stale under it
        assert server.connections == 2


async def test_a_new_connection_closed_without_an_answer_is_not_resent(client: HTTPClient) -> None:
    async with Scripted(stale_after(0)) as server:
        with pytest.raises(ResponseBroken) as broken:
            await post(client.pool(server.url))
        assert (broken.value.lost, broken.value.answered) == (True, False)
        assert server.connections == 1


async def test_a_stale_connection_to_an_engine_gone_reports_the_disconnect(
    client: HTTPClient,
) -> None:
    """Not ConnectFailed: that would let a request that may have crashed its engine be
    resent to another replica (llmgw.resilience.retry)."""
    async with Scripted(stale_after(1)) as server:
        pool = client.pool(server.url)
        assert await post(pool) == b"ok"
        assert server.server is not None
        server.server.close()  # no new connection will be accepted
        with pytest.raises(ResponseBroken) as broken:
            await post(pool)
        assert broken.value.lost


async def test_an_engine_that_closes_after_answering_in_part_is_not_resent(
    client: HTTPClient,
) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [OK])
        await request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")

    async with Scripted(half) as server:
        pool = client.pool(server.url)
        assert await post(pool) == b"ok"
        with pytest.raises(ResponseBroken) as broken:
            await post(pool)
        assert (broken.value.lost, broken.value.answered) == (True, True)
        assert server.connections == 1


@pytest.mark.parametrize(
    ("reply", "lost"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False),
    ],
    ids=["content-length-cut", "chunked-cut", "bad-chunk-size"],
)
async def test_a_body_cut_or_malformed_breaks_the_read(
    client: HTTPClient, reply: bytes, lost: bool
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [reply])

    async with Scripted(cut) as server:
        pool = client.pool(server.url)
        response = await pool.post("/x", b"{}")
        assert response.status == 200
        with pytest.raises(ResponseBroken) as broken:
            await response.read()
        assert broken.value.lost is lost
        assert pool._idle == []


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTX/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (2 * MAX_HEAD_BYTES),
    ],
    ids=["bad-protocol", "bad-status", "over-long-headers", "endless-headers"],
)
async def test_an_invalid_head_is_an_error_not_a_disconnect(
    client: HTTPClient, reply: bytes
) -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        writer.write(reply)  # no drain: the client may close before reading it all
        await server.until_closed(reader)

    async with Scripted(bad) as server:
        with pytest.raises(ResponseBroken) as broken:
            await post(client.pool(server.url))
        assert (broken.value.lost, broken.value.answered) == (False, True)
        await asyncio.wait_for(wait_for(lambda: server.closed_by_client == 1), 5)


async def test_closing_mid_body_or_giving_up_on_the_head_drops_the_connection(
    client: HTTPClient,
) -> None:
    """What makes an engine abort the request of a client that left. A reader cancelled
    mid-body leaves the connection to the response's owner, who may first have to tell
    the engine to abort (SGLang 0.5.18 forgets a request whose connection closed)."""

    async def stream_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)
        if server.connections == 1:
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"4\r\ndata\r\n"
            )
        await server.until_closed(reader)

    async with Scripted(stream_forever) as server:
        pool = client.pool(server.url)
        response = await pool.post("/x", b"{}")
        assert await response.chunk() == b"data"
        reading = asyncio.ensure_future(response.chunk())
        await asyncio.sleep(0)  # let it wait for more
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        conn = response._conn
        assert conn is not None and conn.open  # still the owner's to close
        response.close()
        await asyncio.wait_for(wait_for(lambda: server.closed_by_client == 1), 5)
        head = asyncio.ensure_future(pool.post("/x", b"{}"))  # never answered
        await asyncio.wait_for(wait_for(lambda: server.connections == 2), 5)
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        await asyncio.wait_for(wait_for(lambda: server.closed_by_client == 2), 5)
        assert pool._idle == []


async def test_idle_connections_are_bounded_and_expire(client: HTTPClient) -> None:
    async def forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [OK] * 100)  # returns when the client closes
        server.closed_by_client += 1

    async with Scripted(forever) as server:
        bounded = OriginPool(server.url, connect_timeout_s=5, idle_s=60, max_idle=1)
        responses = await asyncio.gather(*(bounded.post("/x", b"{}") for _ in range(3)))
        assert [await r.read() for r in responses] == [b"ok"] * 3
        assert len(bounded._idle) == 1
        await asyncio.wait_for(wait_for(lambda: server.closed_by_client == 2), 5)
        bounded.close()

        expiring = OriginPool(server.url, connect_timeout_s=5, idle_s=0, max_idle=8)
        assert [await post(expiring) for _ in range(2)] == [b"ok", b"ok"]
        assert server.connections == 5  # none reused: each had expired
        expiring.close()


async def test_bytes_past_the_end_of_an_answer_retire_the_connection(client: HTTPClient) -> None:
    async def trailing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [OK + b"junk"])
        await server.until_closed(reader)

    async with Scripted(trailing) as server:
        pool = client.pool(server.url)
        assert await post(pool) == b"ok"
        await asyncio.wait_for(wait_for(lambda: server.closed_by_client == 1), 5)
        assert pool._idle == []


async def test_a_reader_that_falls_behind_pauses_the_socket(client: HTTPClient) -> None:
    size = 8 * 1024 * 1024  # more than the high-water mark and the socket buffers

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size])
        writer.write(b"x" * size)
        await writer.drain()

    async with Scripted(big) as server:
        response = await client.pool(server.url).post("/x", b"{}")
        conn = response._conn
        assert conn is not None
        await asyncio.wait_for(wait_for(lambda: conn._paused), 5)
        assert len(await response.read()) == size  # reading resumes the socket


async def test_https_engines_are_verified_and_spoken_to(
    client: HTTPClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path, "engine")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # what the pool's default context trusts
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [OK, OK])

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    try:
        port = server.sockets[0].getsockname()[1]
        pool = client.pool(f"https://127.0.0.1:{port}")
        assert [await post(pool) for _ in range(2)] == [b"ok", b"ok"]
        monkeypatch.delenv("SSL_CERT_FILE")
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await post(HTTPClient().pool(f"https://127.0.0.1:{port}"))
        pool.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_no_listener_is_a_connect_failure(client: HTTPClient) -> None:
    with pytest.raises(ConnectFailed):
        await post(client.pool(f"http://127.0.0.1:{free_port()}"))


async def wait_for(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition`` holds (callers bound it with wait_for)."""
    while not condition():
        await asyncio.sleep(0)


# --- against a real engine server, through OpenAIHTTPEngine -------------------------------


@pytest.fixture(scope="module")
def fake_engine() -> Iterator[Server]:
    engine = start_fake_engine()
    yield engine
    engine.stop()


async def test_json_and_streams_from_a_real_engine_over_shared_connections(
    fake_engine: Server, client: HTTPClient
) -> None:
    async with aiohttp.ClientSession() as session:
        engine = OpenAIHTTPEngine(fake_engine.url, session, client)

        async def one(stream: bool) -> bytes:
            body = orjson.dumps({"model": "m", "prompt": "a", "max_tokens": 8, "stream": stream})
            upstream = await engine.send("/v1/completions", body)
            try:
                if not stream:
                    return await upstream.read()
                return b"".join([block async for block in upstream.event_blocks()])
            finally:
                upstream.close()

        answers = await asyncio.gather(*(one(i % 2 == 1) for i in range(16)))
        assert answers[2:] == answers[:-2]  # the same answer, whichever connection
        texts = [
            orjson.loads(answers[0])["choices"][0]["text"],
            "".join(
                orjson.loads(line[6:])["choices"][0]["text"]
                for line in answers[1].split(b"\n\n")
                if line.startswith(b"data: {")
            ),
        ]
        assert texts == ["tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7"] * 2
        assert 0 < len(engine._pool._idle) <= 16


async def test_engine_errors_map_to_upstream_errors(client: HTTPClient) -> None:
    async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_head(reader)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer_each(reader, writer, [b"nonsense\r\n\r\n"])

    async with (
        aiohttp.ClientSession() as session,
        Scripted(closes) as closing,
        Scripted(garbage) as invalid,
    ):
        dead = f"http://127.0.0.1:{free_port()}"
        errors = []
        for url in (dead, closing.url, invalid.url):
            with pytest.raises(UpstreamError) as raised:
                await OpenAIHTTPEngine(url, session, client).send("/v1/completions", b"{}")
            errors.append(type(raised.value))
    assert errors == [UpstreamUnreachable, UpstreamDisconnected, UpstreamError]
