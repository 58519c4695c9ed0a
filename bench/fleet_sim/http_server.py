"""A minimal HTTP/1.1 keep-alive server on an asyncio Protocol, cheap per request.

One request at a time per connection, each handled by its own task; when the client
closes the connection the task is cancelled, which is how the simulator aborts a request.
The framing (what requests are understood, how responses are headed) is ``bench/http11.py``,
shared with the instant engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from bench.http11 import LAST_CHUNK, Request, http_chunk, response_head, take_request

log = logging.getLogger(__name__)


class Responder:
    """Writes one response: either :meth:`send` a whole body, or :meth:`start` a chunked
    stream, :meth:`chunk` it and :meth:`end` it. ``closed`` turns true if the client left."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.closed = False

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:
        if not self.closed:
            self._transport.write(response_head(status, content_type, len(body), headers) + body)

    def start(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        if not self.closed:
            self._transport.write(response_head(status, content_type, None, headers))

    def chunk(self, data: bytes) -> None:
        if not self.closed and data:
            self._transport.write(http_chunk(data))

    def end(self) -> None:
        if not self.closed:
            self._transport.write(LAST_CHUNK)


Handler = Callable[[Request, Responder], Coroutine[Any, Any, None]]


class Connection(asyncio.Protocol):
    """One client connection; requests are answered in order, one task each."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._responder: Responder | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are duck-typed, not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._responder is not None:
            self._responder.closed = True
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None:
            self._next()

    def _next(self) -> None:
        if self._transport is None:
            return
        request = take_request(self._buf, self._transport)
        if request is None:
            return
        self._responder = Responder(self._transport)
        self._task = asyncio.get_running_loop().create_task(
            self._handler(request, self._responder))
        self._task.add_done_callback(lambda task: self._done(task, request.close))

    def _done(self, task: asyncio.Task[None], close: bool) -> None:
        self._task = self._responder = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("handler failed", exc_info=exc)
            if self._transport is not None:
                self._transport.close()  # a handler bug: drop the connection, keep serving
            return
        if close and self._transport is not None:
            self._transport.close()
        else:
            self._next()


async def serve(host: str, port: int, handler: Handler) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Connection(handler), host, port, backlog=1024)
