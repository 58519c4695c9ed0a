"""The streaming response: relays an engine's SSE events and always releases the request.

It owns an :class:`Exchange` and calls ``finish`` in ``finally``, so in-flight counts, the
upstream connection and metrics are released whatever happens: done, error, timeout, or
the client leaving (which aborts the engine request by closing the upstream).
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmgw.api.disconnect import DisconnectWatch
from llmgw.api.errors import error_event
from llmgw.dispatcher import DONE_EVENT, Exchange
from llmgw.errors import GatewayError, UpstreamTimeout

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # keep proxies like nginx from buffering the stream
]


class RelayStreamResponse(Response):
    def __init__(self, exchange: Exchange, client_wants_usage: bool,
                 headers: list[tuple[bytes, bytes]]) -> None:
        self.exchange = exchange
        self.client_wants_usage = client_wants_usage
        self.extra_headers = headers
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex, outcome = self.exchange, "cancelled"
        error: GatewayError | None = None
        try:
            async with DisconnectWatch(receive) as watch:
                await send({"type": "http.response.start", "status": 200,
                            "headers": _SSE_HEADERS + self.extra_headers})
                try:
                    async with asyncio.timeout_at(ex.deadline):
                        async for event in ex.relay(self.client_wants_usage):
                            await send({"type": "http.response.body", "body": event,
                                        "more_body": True})
                    outcome = "ok"
                except TimeoutError:
                    error = UpstreamTimeout("the request exceeded its time limit mid-stream")
                except GatewayError as exc:
                    error = exc
                tail = DONE_EVENT if error is None else error_event(error) + DONE_EVENT
                if error is not None:
                    outcome = "timeout" if isinstance(error, UpstreamTimeout) else "upstream_error"
                watch.done = True
                await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            if error is not None:
                ex.record_error(error)
            ex.finish(outcome, 200)  # type: ignore[arg-type]
