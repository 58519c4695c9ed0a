"""One keep-alive HTTP/1.1 connection to an engine: an asyncio Protocol whose responses
are parsed by ``httptools`` (llhttp, the parser uvicorn and Node use), never by hand.

One request at a time (no pipelining). The body arrives as the bytes each socket read
carried: every ``data_received`` wakes the reader once with everything that read held,
however many chunks of a chunked body it framed, which is what keeps an SSE relay at one
client write per read (llmgw.engines.openai_http).

Not thread-safe; one task uses a connection at a time (the pool hands it out).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

import httptools

# Bytes of status line and headers an engine may send: the same bound the gateway puts on
# its clients' headers (llmgw.api.header_limit). Engines send a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
# Body bytes buffered ahead of a slow reader before the socket stops being read (the
# engine then waits on TCP backpressure, as it would for a slow direct client).
_HIGH_WATER = 1024 * 1024


class ResponseBroken(Exception):
    """The response could not be read to its end. ``answered``: whether any byte of it
    had arrived; a connection lost with none leaves open whether the engine read the
    request (llmgw.engines.http1.pool decides whether that may be resent)."""

    def __init__(self, reason: str, *, answered: bool, lost: bool) -> None:
        super().__init__(reason)
        self.answered, self.lost = answered, lost


class Connection(asyncio.Protocol):
    """Call ``begin`` with a request's bytes, ``head`` for its status, then ``chunk``
    until it returns b"". ``reusable`` says, once the body has ended, whether the
    connection may carry another request."""

    def __init__(self, lost: Callable[[Connection], None]) -> None:
        """``lost``: called once the connection has closed, whoever closed it."""
        self._lost = lost
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._active = False  # a request is out and its response has not ended
        self.idle_since = 0.0  # time.monotonic() when it went back to the pool
        self._reset()

    def _reset(self) -> None:
        self._received = 0  # bytes of the current response so far
        self._head_bytes = 0  # of its header names and values
        self._status = 0  # set when its headers are complete
        self._complete = False
        self._keep_alive = False
        self._framed = False  # Content-Length or chunked: the body does not end at EOF
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._error: ResponseBroken | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self._transport = cast(asyncio.Transport, transport)
        # Kept: asyncio.get_running_loop() checks the process id (a getpid system call)
        # on every call, and every request makes a future.
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Bytes while no request is out (or past the end of a response): the engine
            # broke the exchange's order, so the connection cannot be trusted again.
            self.close()
            return
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"engine sent an invalid HTTP response: {exc}")
            return
        if not self._status and self._received > MAX_HEAD_BYTES:  # and still coming
            self._fail(f"engine response headers exceed {MAX_HEAD_BYTES} bytes")
            return
        if self._buffered > _HIGH_WATER and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost(self)
        if not self._active or self._error is not None:
            return
        self._active = False
        if self._status and not self._framed:  # the body ran to EOF: that is its end
            self._complete = True
        else:
            why = (
                f"engine closed the connection: {exc!r}" if exc else "engine closed the connection"
            )
            self._error = ResponseBroken(why, answered=self._received > 0, lost=True)
        self._wake()

    # --- httptools callbacks ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        # len() first: most headers are neither, and lower() allocates.
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self._head_bytes > MAX_HEAD_BYTES:  # raised by feed_data as a parser error
            raise ValueError(f"engine response headers exceed {MAX_HEAD_BYTES} bytes")
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        self._complete, self._active = True, False

    # --- the request's side -------------------------------------------------------

    def begin(self, request: bytes) -> None:
        """Send a request (head and body in one write)."""
        assert self._transport is not None and self._loop is not None
        self._reset()
        self._active = True
        self._waiter = self._loop.create_future()
        self._transport.write(request)

    async def head(self) -> int:
        """The response's status, once its headers have arrived."""
        while not self._status:
            await self._wait()
        return self._status

    async def chunk(self) -> bytes:
        """The body bytes that arrived since the last call (several chunks of a chunked
        body in one), waiting for some; b"" once the body has ended."""
        while not self._chunks:
            if self._complete:
                return b""
            await self._wait()
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def rest(self) -> bytes:
        """The rest of the body, once it has ended: what ``chunk`` would give until b"",
        in one call. Reading goes on past the high-water mark (the caller keeps it all
        anyway)."""
        chunks: list[bytes] = []
        while True:
            if self._chunks:
                chunks += self._chunks
                self._chunks, self._buffered = [], 0
                if self._paused and self._transport is not None:
                    self._paused = False
                    self._transport.resume_reading()
            if self._complete:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            await self._wait()

    @property
    def open(self) -> bool:
        """Neither side has closed it, as far as the loop has seen (a peer's close that
        arrived in this loop turn shows as the transport closing)."""
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    @property
    def reusable(self) -> bool:
        """The response ended in full and both sides keep the connection open."""
        return self._complete and self._keep_alive and not self.closed and not self._chunks

    def close(self) -> None:
        """Drop the connection (mid-response: the engine sees the client leave)."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _wait(self) -> asyncio.Future[None]:
        """What to await for the next wake-up: data, the end, or an error (raised by the
        next call). A future, not a coroutine: one frame less per wait."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter
        if waiter is None or waiter.done():
            assert self._loop is not None  # connected: a request is out
            waiter = self._waiter = self._loop.create_future()
        return waiter

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, reason: str) -> None:
        """The engine's bytes are not a valid response: the connection is done for."""
        self._error = ResponseBroken(reason, answered=True, lost=False)
        self._active = False
        self.close()
        self._wake()
