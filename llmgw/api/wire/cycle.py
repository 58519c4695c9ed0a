"""One model request on the wire: the ASGI ``receive`` and ``send`` of a model route,
written straight to the connection.

It stands where uvicorn's ``RequestResponseCycle`` stands (the protocol feeds it the
body and tells it of a disconnect through the same attributes), and differs where the
generation path paid for generality it does not use (bench/overhead.py --profile):

- the head of an answer with a ``content-length`` is held until its body, so a JSON
  answer leaves in one write (uvicorn writes head and body apart: two syscalls);
- header names and values are not checked against uvicorn's regular expressions on every
  response: the model routes send only headers the gateway builds or echoes from the
  request's own (already parsed, so free of CR and LF);
- a disconnect reaches the request's ``DisconnectWatch`` as a call (the
  ``llmgw.disconnect`` scope extension), not through a task per request that waits on
  ``receive()``;
- a whole JSON answer is one call (the ``llmgw.json_answer`` scope extension: status,
  headers, body), not two ASGI messages whose head is searched for its length;
- a request body that came with its head is taken in one call (``llmgw.request_body``),
  not through ``receive`` and a coroutine reading messages;
- the routes are known, so there is no middleware stack or router in between.

Everything a client can see is what uvicorn does: keep-alive and ``connection: close``,
``Expect: 100-continue``, chunked streams, pipelined requests answered in order, the
server's ``date`` and ``server`` headers, flow control both ways, a graceful shutdown that
lets the answer in progress finish.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from llmgw.errors import GatewayError

log = logging.getLogger("llmgw.api")

Headers = list[tuple[bytes, bytes]]
# Called with the task serving the request (llmgw.api.disconnect.ClientLeft).
DisconnectCallback = Callable[["asyncio.Task[Any]"], None]
# The ``llmgw.json_answer`` extension: (status, more headers, the JSON body).
JSONAnswer = Callable[[int, Headers, bytes], Awaitable[None]]


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
# What a client gets of a route that failed before answering (the route answers its own
# errors; this is the net under it), in the gateway's error shape.
_INTERNAL_ERROR = orjson.dumps(GatewayError("internal error").body())


class Signal:
    """What ``asyncio.Event`` gives the protocol (set, wait, clear), for one waiter: the
    protocol sets it for every body part and every request, so it is kept small."""

    __slots__ = ("is_set", "_waiter")

    def __init__(self) -> None:
        self.is_set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self.is_set = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self.is_set = False

    async def wait(self) -> None:
        if self.is_set:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter


class WireCycle:
    """One request/response on a connection of ``llmgw.api.wire.protocol``.

    ``body``, ``more_body``, ``message_event``, ``disconnected``, ``response_complete``
    and ``keep_alive`` are read and written by uvicorn's protocol exactly as on its own
    cycle; ``run_asgi`` is what the protocol starts (in order, for pipelined requests)."""

    def __init__(
        self,
        scope: dict[str, Any],
        transport: asyncio.Transport,
        flow: Any,
        server_lines: bytes,
        keep_alive: bool,
        expect_100_continue: bool,
        on_response: Callable[[], None],
    ) -> None:
        self.scope = scope
        self.transport = transport
        self.flow = flow  # uvicorn's FlowControl: read pausing, and draining writes
        # The server's own header lines (date, server, ...), rendered, first in every head.
        self.server_lines = server_lines
        self.keep_alive = keep_alive
        self.waiting_for_100_continue = expect_100_continue
        self.on_response = on_response
        self.body = bytearray()
        self.more_body = True
        self.message_event = Signal()
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self._chunked = False
        self._held_head: bytes | None = None
        self._on_disconnect: DisconnectCallback | None = None
        # The task serving the request, set by the protocol that starts it: a disconnect
        # names it to the watch (which would otherwise ask asyncio for the current task,
        # a getpid() system call per request).
        self.task: asyncio.Task[Any] | None = None
        scope["extensions"] = {
            "llmgw.disconnect": self._watch_disconnect,
            "llmgw.json_answer": self.json_answer,
            "llmgw.request_body": self.whole_body,
        }

    # --- what the protocol calls -----------------------------------------------------

    async def run_asgi(self, app: ASGIApp) -> None:
        """Serve the request with ``app`` (a model route). Whatever it leaves undone is
        ended as uvicorn ends it: a 500 before the response started, a closed
        connection after."""
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException:
            log.exception("unhandled error in a model route")
            self._abandon()
        else:
            if not self.response_complete and not self.disconnected:
                log.error("a model route returned without completing its response")
                self._abandon()
        finally:
            # Break the reference cycles a request made (the protocol -> this cycle ->
            # its response callback, the scope's extension -> this cycle -> the watch ->
            # the request's task), so that all of it is freed by reference counting when
            # the protocol drops this cycle, not left for the garbage collector to find.
            self.on_response = _nothing
            self._on_disconnect = None
            self.task = None
            self.scope.pop("extensions", None)

    def client_left(self) -> None:
        """The connection was lost (the protocol set ``disconnected`` when the response
        was not complete): tell the request's watch, once."""
        if not self.disconnected:
            return
        callback, self._on_disconnect = self._on_disconnect, None
        if callback is not None and self.task is not None:
            callback(self.task)

    # --- ASGI ------------------------------------------------------------------------

    async def receive(self) -> Message:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(_CONTINUE)
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            if self.flow.read_paused:
                self.flow.resume_reading()
            event = self.message_event
            if not event.is_set:  # the body usually came with the head: no wait to await
                await event.wait()
            event.is_set = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more_body}
        self.body = bytearray()
        return message

    def whole_body(self) -> bytes | None:
        """The request's whole body when it came with its head (the common case), taken in
        one call; None while more is to come (a large body, ``Expect: 100-continue``):
        ``receive`` it then, as ASGI does. Afterwards ``receive`` answers as it does once
        the last body message was taken."""
        if self.more_body or self.disconnected or not self.message_event.is_set:
            return None
        self.message_event.is_set = False
        body, self.body = bytes(self.body), bytearray()
        return body

    async def send(self, message: Message) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']}")
            self._start(message["status"], message.get("headers", ()))
            return
        if self.response_complete or message["type"] != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {message['type']}")
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self._chunked:
            out = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                out += _LAST_CHUNK
        else:
            out = body
        if self._held_head is not None:
            out, self._held_head = self._held_head + out, None
        if out:
            self.transport.write(out)
        if not more:
            self._complete()

    async def json_answer(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole JSON answer in one write: what ``send`` makes of a start message with
        the content type and length and one body message, without the messages."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if self.response_started:
            raise RuntimeError("json_answer after the response started")
        lines = [b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)]
        lines += [b"%s: %s\r\n" % header for header in headers]
        self.transport.write(self._head(status, lines) + body)
        self._complete()

    # --- internals -------------------------------------------------------------------

    def _start(self, status: int, headers: Any) -> None:
        """Build the head; hold it when the body's length is known (one write with the
        body), write it now for a stream (its first event may be a while)."""
        lines = []
        length_known = False
        for name, value in headers:
            if name == b"content-length":
                length_known = True
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                continue  # added once, by _head
            lines.append(b"%s: %s\r\n" % (name, value))
        if not length_known and status not in (204, 304):
            self._chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        head = self._head(status, lines)
        if length_known:
            self._held_head = head
        else:
            self.transport.write(head)

    def _head(self, status: int, lines: list[bytes]) -> bytes:
        """The response starts: its head, from the status line, the server's own lines,
        the answer's ``lines`` and ``connection: close`` when the connection ends with
        this answer."""
        self.response_started = True
        self.waiting_for_100_continue = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        return b"%s%s%s\r\n" % (STATUS_LINE[status], self.server_lines, b"".join(lines))

    def _complete(self) -> None:
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    def _abandon(self) -> None:
        if self.disconnected or self.response_complete:
            return
        if not self.response_started:
            self.keep_alive = False
            self._start(
                500,
                [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(_INTERNAL_ERROR)),
                ],
            )
            self.transport.write((self._held_head or b"") + _INTERNAL_ERROR)
            self._held_head = None
            self._complete()
        else:
            self.transport.close()

    def _watch_disconnect(self, callback: DisconnectCallback) -> None:
        """The ``llmgw.disconnect`` extension: ``callback`` is called once if the client
        leaves before the response is complete (at once if it already has), with the task
        serving the request."""
        if self.disconnected:
            if self.task is not None:
                callback(self.task)
        else:
            self._on_disconnect = callback


def _nothing() -> None:
    return None
