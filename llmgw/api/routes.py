"""OpenAI routes. Handlers parse and validate once, then delegate to the dispatcher."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.disconnect import DisconnectWatch
from llmgw.api.errors import error_response
from llmgw.api.sse import RelayStreamResponse
from llmgw.dispatcher import Dispatcher, Exchange, ModelGroup
from llmgw.errors import GatewayError, InvalidRequest, PayloadTooLarge
from llmgw.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from llmgw.types import RequestContext

_MODELS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "chat": ChatCompletionRequest, "completions": CompletionRequest}


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, endpoint: str) -> tuple[dict[str, Any], GenerationRequest]:
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


async def handle_generation(request: Request, endpoint: str) -> Response:
    state = request.app.state
    dispatcher: Dispatcher = state.dispatcher
    started = time.perf_counter()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    headers = [(b"x-request-id", request_id.encode())]
    model = "unknown"
    try:
        body = await read_body(request, state.max_body_bytes)
        parsed, req = parse_request(body, endpoint)
        group = dispatcher.group(req.model)
        model, stream = group.name, bool(req.stream)
        ctx = RequestContext(request_id=request_id, model=group.name,
                             endpoint=endpoint,  # type: ignore[arg-type]
                             stream=stream, headers=request.headers)
        upstream = dispatcher.upstream_body(group, body, parsed, stream, req.wants_usage)
        exchange = await _open_watching_client(request, dispatcher, ctx, group, upstream)
    except GatewayError as exc:
        dispatcher.record_error(model, exc)
        dispatcher.record(model, endpoint, exc.status_code, started)
        return error_response(exc, {"x-request-id": request_id})
    if exchange is None:  # the client left before the engine answered
        dispatcher.record(model, endpoint, 499, started)
        return Response(status_code=499)
    headers.append((b"x-llmgw-replica", exchange.replica.id.encode()))
    if stream:
        return RelayStreamResponse(exchange, req.wants_usage, headers)
    return await relay_json(request, exchange, headers)


async def _open_watching_client(
    request: Request, dispatcher: Dispatcher, ctx: RequestContext, group: ModelGroup,
    body: bytes,
) -> Exchange | None:
    """Send the request to an engine; None if the client disconnects meanwhile (the
    cancelled send closes the engine connection, which aborts the engine request)."""
    async with DisconnectWatch(request.receive) as watch:
        exchange = await dispatcher.open(ctx, group, body)
        watch.done = True
    return None if watch.disconnected else exchange


async def relay_json(
    request: Request, exchange: Exchange, headers: list[tuple[bytes, bytes]]
) -> Response:
    """A non-streaming answer: the engine's bytes, read while watching for a disconnect."""
    outcome, status, payload = "cancelled", 499, None
    try:
        async with DisconnectWatch(request.receive) as watch:
            payload = await exchange.read_all()
            watch.done = True
        if payload is not None:
            outcome, status = "ok", exchange.upstream.status
            return Response(payload, status_code=status, media_type="application/json",
                            headers={k.decode(): v.decode() for k, v in headers})
        return Response(status_code=499)
    except GatewayError as exc:
        exchange.record_error(exc)
        outcome, status = "upstream_error", exc.status_code
        return error_response(exc, {k.decode(): v.decode() for k, v in headers})
    finally:
        exchange.finish(outcome, status)  # type: ignore[arg-type]


async def chat_completions(request: Request) -> Response:
    return await handle_generation(request, "chat")


async def completions(request: Request) -> Response:
    return await handle_generation(request, "completions")


async def list_models(request: Request) -> Response:
    dispatcher: Dispatcher = request.app.state.dispatcher
    created = request.app.state.created
    data = [{"id": name, "object": "model", "created": created, "owned_by": "llmgw"}
            for name in dispatcher.groups]
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    pool = request.app.state.pool
    models = {name: pool.ready(name) for name in request.app.state.dispatcher.groups}
    ok = all(models.values())
    return Response(orjson.dumps({"ready": ok, "models": models}),
                    status_code=200 if ok else 503, media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")
