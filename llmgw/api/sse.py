"""Relaying an engine's answer to the client as raw ASGI messages.

Both functions return the request's outcome and never raise a GatewayError once the
response has started: a failure mid-stream becomes an SSE error event followed by
``data: [DONE]`` (on the endpoints whose streams end so), because the status line is
already on the wire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.types import Send

from llmgw.api.disconnect import DisconnectWatch
from llmgw.api.errors import error_event, internal_error
from llmgw.api.wire.cycle import JSONAnswer  # the llmgw.json_answer scope extension
from llmgw.errors import GatewayError, UpstreamTimeout
from llmgw.exchange import DONE_EVENT, Exchange
from llmgw.protocol import ENDPOINTS
from llmgw.types import Outcome

log = logging.getLogger("llmgw.api")
Headers = list[tuple[bytes, bytes]]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # keep proxies like nginx from buffering the stream
]


async def relay_stream(exchange: Exchange, send: Send, client_wants_usage: bool,
                       headers: Headers, watch: DisconnectWatch, request_id: str) -> Outcome:
    """``request_id``: the client's, named in the error event of a gateway bug."""
    await send({"type": "http.response.start", "status": 200,
                "headers": SSE_HEADERS + headers})
    # Responses streams end with their last event, chat and completions with [DONE].
    done = DONE_EVENT if ENDPOINTS[exchange.ctx.endpoint].done_event else b""
    return await end_in_band(_relay_in_time(exchange, send, client_wants_usage), send, watch,
                             exchange.record_error, request_id, done)


async def end_in_band(work: Awaitable[None], send: Send, watch: DisconnectWatch,
                      record: Callable[[GatewayError], None], request_id: str,
                      done: bytes = DONE_EVENT) -> Outcome:
    """Run ``work``, which writes the events of a stream whose status is sent, then end
    the stream: ``done``, or the failure (``record``-ed) as an error event and ``done``.
    ``request_id``: the client's, named in the error event of a gateway bug."""
    error: GatewayError | None = None
    try:
        await work
    except TimeoutError:
        error = UpstreamTimeout("the request exceeded its time limit mid-stream")
    except GatewayError as exc:
        error = exc
    except Exception:  # the status is sent: a bug too must end the stream in-band
        log.exception("unhandled error mid-stream (request_id=%s)", request_id)
        error = internal_error(request_id)
    watch.done = True
    if error is None:
        await send({"type": "http.response.body", "body": done, "more_body": False})
        return "ok"
    record(error)
    await send({"type": "http.response.body", "body": error_event(error) + done,
                "more_body": False})
    return "timeout" if isinstance(error, UpstreamTimeout) else "upstream_error"


async def _relay_in_time(exchange: Exchange, send: Send, client_wants_usage: bool) -> None:
    if exchange.deadline is None:
        await _relay_events(exchange, send, client_wants_usage)
    else:
        async with asyncio.timeout_at(exchange.deadline):
            await _relay_events(exchange, send, client_wants_usage)


async def _relay_events(exchange: Exchange, send: Send, client_wants_usage: bool) -> None:
    async for block in exchange.relay(client_wants_usage):
        await send({"type": "http.response.body", "body": block, "more_body": True})


async def relay_json(exchange: Exchange, send: Send, headers: Headers,
                     watch: DisconnectWatch, json_answer: JSONAnswer | None = None) -> int:
    """Send the engine's whole answer; returns its status. Raises GatewayError before
    anything was sent (e.g. a timeout), so the caller can still answer with an error."""
    body = await exchange.read_all()
    watch.done = True
    status = exchange.upstream.status
    if json_answer is not None:
        await json_answer(status, headers, body)
        return status
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
    return status
