"""OpenAI routes. Handlers parse and validate once, then delegate to the dispatcher."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.errors import error_response
from llmgw.api.sse import RelayJSONResponse, RelayStreamResponse
from llmgw.dispatcher import Dispatcher
from llmgw.errors import GatewayError, InvalidRequest, PayloadTooLarge
from llmgw.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from llmgw.types import RequestContext

_MODELS = {"chat": ChatCompletionRequest, "completions": CompletionRequest}


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
        model = group.name
        stream = bool(req.stream)
        ctx = RequestContext(request_id=request_id, model=group.name,
                             endpoint=endpoint,  # type: ignore[arg-type]
                             stream=stream, headers=request.headers)
        upstream = dispatcher.upstream_body(group, body, parsed, stream, req.wants_usage)
        exchange = await dispatcher.open(ctx, group, upstream)
    except GatewayError as exc:
        dispatcher.record_error(model, exc)
        dispatcher.record(model, endpoint, exc.status_code, started)
        return error_response(exc, {"x-request-id": request_id})
    headers.append((b"x-llmgw-replica", exchange.replica.id.encode()))
    if stream:
        return RelayStreamResponse(exchange, req.wants_usage, headers)
    return RelayJSONResponse(exchange, headers)


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
