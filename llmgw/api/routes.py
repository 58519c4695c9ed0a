"""The small routes: model listing, health, readiness, metrics. Generation lives in
``generation.py``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llmgw.dispatcher import Dispatcher


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
