"""The generation routes (/v1/chat/completions, /v1/completions) as a raw ASGI app.

The hot path skips Starlette's request/response wrappers: one function reads the body,
validates it once, opens the engine request and relays the answer, with one disconnect
watch spanning all of it, so a client that leaves at any point aborts the engine request.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

import orjson
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from llmgw.api.disconnect import DisconnectWatch
from llmgw.api.errors import error_response
from llmgw.api.sse import relay_json, relay_stream
from llmgw.dispatcher import Dispatcher, Exchange, ModelGroup
from llmgw.errors import GatewayError, InvalidRequest, PayloadTooLarge, UpstreamTimeout
from llmgw.lora.catalog import Adapter
from llmgw.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    prompt_text,
)
from llmgw.routing.session import session_key
from llmgw.types import Outcome, RequestContext

Endpoint = Literal["chat", "completions"]
_MODELS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "chat": ChatCompletionRequest, "completions": CompletionRequest}


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def parse_request(body: bytes, endpoint: Endpoint) -> tuple[dict[str, Any], GenerationRequest]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return parsed, _MODELS[endpoint].model_validate(parsed)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"],
                             param=param) from None


# Opt-in: a request carrying this header gets x-llmgw-route with the routing decision.
EXPLAIN_HEADER = "x-llmgw-explain"


# Ray Serve's header naming the multiplexed model (here: the LoRA adapter) of a request.
MULTIPLEX_HEADER = "serve_multiplexed_model_id"


async def request_context(request_id: str, group: ModelGroup, endpoint: Endpoint,
                          stream: bool, headers: Headers, parsed: dict[str, Any],
                          adapter: Adapter | None = None) -> RequestContext:
    """What routing may know; the prompt text, its tokens and the session key only when
    the model's policies use them (rendering or tokenizing a long history costs)."""
    needs = group.needs
    tokens = None
    if "tokens" in needs and group.tokenizer is not None:
        tokens = await group.tokenizer.tokens(endpoint, parsed)
    return RequestContext(
        request_id=request_id, model=group.name, endpoint=endpoint, stream=stream,
        headers=headers, adapter=adapter.name if adapter is not None else None,
        prompt=prompt_text(parsed) if "prompt" in needs else "",
        prompt_tokens=tokens,
        session_id=session_key(headers, parsed) if "session" in needs else None,
    )


class GenerationRoute:
    """An ASGI app for one generation endpoint; reads its collaborators from app.state."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        dispatcher: Dispatcher = state.dispatcher
        started = time.perf_counter()
        headers = Headers(scope=scope)
        request_id = headers.get("x-request-id") or os.urandom(16).hex()
        reply_headers = [(b"x-request-id", request_id.encode())]
        model, exchange = "", None
        outcome: Outcome = "cancelled"
        status = 499
        try:
            body = await read_body(receive, headers, state.max_body_bytes)
            parsed, req = parse_request(body, self.endpoint)
            group, adapter = dispatcher.resolve(req.model, headers.get(MULTIPLEX_HEADER))
            model, stream = group.name, bool(req.stream)
            if adapter is not None and group.lora is not None:
                group.lora.note_request(adapter)
            ctx = await request_context(request_id, group, self.endpoint, stream, headers,
                                        parsed, adapter)
            # Unique per engine request (never the client's id, which may repeat): engines
            # that abort by id must not stop someone else's request.
            upstream_id = os.urandom(12).hex()
            upstream = dispatcher.upstream_body(group, body, parsed, stream, req.wants_usage,
                                                upstream_id, adapter)
            async with DisconnectWatch(receive) as watch:
                exchange = await dispatcher.open(ctx, group, upstream, upstream_id,
                                                 explain=EXPLAIN_HEADER in headers)
                reply_headers.append((b"x-llmgw-replica", exchange.replica.id.encode()))
                if exchange.decision is not None:
                    reply_headers.append((b"x-llmgw-route", orjson.dumps(
                        {"replica": exchange.replica.id, **exchange.decision.as_dict()})))
                if stream:
                    outcome, status = await relay_stream(
                        exchange, send, req.wants_usage, reply_headers, watch), 200
                else:
                    status, outcome = await relay_json(exchange, send, reply_headers, watch), "ok"
        except GatewayError as exc:
            status = exc.status_code
            outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
            await self._fail(dispatcher, exchange, model, exc, started, reply_headers,
                             (scope, receive, send))
        finally:
            await self._close(dispatcher, exchange, model, outcome, status, started)

    async def _fail(self, dispatcher: Dispatcher, exchange: Exchange | None, model: str,
                    error: GatewayError, started: float, headers: list[tuple[bytes, bytes]],
                    asgi: tuple[Scope, Receive, Send]) -> None:
        if exchange is not None:
            exchange.record_error(error)
        else:
            dispatcher.record_failure(model, self.endpoint, error, error.status_code, started)
        response = error_response(error, {k.decode(): v.decode() for k, v in headers})
        await response(*asgi)

    async def _close(self, dispatcher: Dispatcher, exchange: Exchange | None, model: str,
                     outcome: Outcome, status: int, started: float) -> None:
        if exchange is not None:
            if outcome in ("cancelled", "timeout"):
                await exchange.abort()
            exchange.finish(outcome, status)
        elif outcome == "cancelled":  # the client left before an engine answered
            dispatcher.record_failure(model, self.endpoint, None, 499, started)
