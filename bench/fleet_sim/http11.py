"""A minimal HTTP/1.1 keep-alive server on an asyncio Protocol, cheap per request.

One request at a time per connection, each handled by its own task; when the client
closes the connection the task is cancelled, which is how the simulator aborts a request.
Only what OpenAI clients and routers send is understood: Content-Length or chunked
bodies, ``Connection: close``, HTTP/1.0 closing by default.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs

log = logging.getLogger(__name__)
_MAX_HEAD = 64 * 1024
_MAX_BODY = 32 * 1024 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    close: bool


class Responder:
    """Writes one response: either :meth:`send` a whole body, or :meth:`start` a chunked
    stream, :meth:`chunk` it and :meth:`end` it. ``closed`` turns true if the client left."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.closed = False

    def _head(self, status: int, content_type: str, headers: dict[str, str],
              length: int | None) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                 f"content-type: {content_type}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("transfer-encoding: chunked" if length is None
                     else f"content-length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(self, status: int, body: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:
        if not self.closed:
            self._transport.write(self._head(status, content_type, headers or {}, len(body))
                                  + body)

    def start(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        if not self.closed:
            self._transport.write(self._head(status, content_type, headers, None))

    def chunk(self, data: bytes) -> None:
        if not self.closed and data:
            self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        if not self.closed:
            self._transport.write(b"0\r\n\r\n")


Handler = Callable[[Request, Responder], Coroutine[Any, Any, None]]


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: (body, end) or None while incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # the blank line after optional trailers
            return (b"".join(parts), end + 4) if end >= 0 else None
        start = eol + 2
        if len(buf) < start + size + 2:
            return None
        parts.append(bytes(buf[start:start + size]))
        pos = start + size + 2


def parse_request(buf: bytearray) -> tuple[Request, int] | None:
    """The first complete request in ``buf`` and its length; None while incomplete.
    Raises ValueError on a request this server will not read."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > _MAX_HEAD:
            raise ValueError("request head too large")
        return None
    lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length > _MAX_BODY:
        raise ValueError("request body too large")
    close = ("close" in headers.get("connection", "").lower()) or version == "HTTP/1.0"
    path, _, query = target.partition("?")
    start = head_end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        found = _dechunk(buf, start)
        if found is None:
            return None
        body, end = found
    else:
        if len(buf) < start + length:
            return None
        body, end = bytes(buf[start:start + length]), start + length
    return Request(method, path, parse_qs(query), headers, body, close), end


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
        try:
            found = parse_request(self._buf)
        except ValueError:
            Responder(self._transport).send(413, b'{"error":{"message":"bad request"}}')
            self._transport.close()
            return
        if found is None:
            return
        request, used = found
        del self._buf[:used]
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
