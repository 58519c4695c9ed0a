"""The small routes: model listing and lookup, health, readiness, metrics. The model
endpoints (generation, embeddings, tokenizer) live in ``generation.py``."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.admin import authorize
from llmgw.api.errors import error_response
from llmgw.api.generation import (
    MULTIPLEX_HEADER,
    parse_request,
    read_body,
    request_context,
)
from llmgw.api.request_checks import check_request
from llmgw.api.request_ids import new_request_id
from llmgw.dispatcher import Dispatcher
from llmgw.errors import GatewayError, ModelNotFound
from llmgw.protocol import Endpoint


async def list_models(request: Request) -> Response:
    """Every served name, or with ``auth:`` those the caller's key may use."""
    try:
        data = _visible_models(request)
    except GatewayError as exc:
        return error_response(exc)
    return Response(orjson.dumps({"object": "list", "data": data}),
                    media_type="application/json")


async def get_model(request: Request) -> Response:
    """One entry of /v1/models (a model, an adapter or an alias); a name the caller's key
    may not use is a 404 exactly like one that does not exist."""
    name = request.path_params["model"]
    try:
        found = [entry for entry in _visible_models(request) if entry["id"] == name]
        if not found:
            raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    except GatewayError as exc:
        return error_response(exc)
    return Response(orjson.dumps(found[0]), media_type="application/json")


def _visible_models(request: Request) -> list[dict[str, object]]:
    """The /v1/models entries the caller may see. Raises InvalidApiKey (with ``auth:``)."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    created = request.app.state.created
    key = request.app.state.tenancy.authenticate(request.headers)
    data: list[dict[str, object]] = [
        {"id": name, "object": "model", "created": created, "owned_by": "llmgw"}
        for name in dispatcher.groups]
    for group in dispatcher.groups.values():  # LoRA adapters, each with its base model
        if group.lora is not None:
            data += [{"id": a.name, "object": "model", "created": created, "owned_by": "llmgw",
                      "parent": group.name, "root": group.name}
                     for a in group.lora.catalog.for_base(group.name)]
    data += [{"id": name, "object": "model", "created": created, "owned_by": "llmgw",
              "targets": split.weights()} for name, split in dispatcher.splits.items()]
    if key is not None:
        data = [entry for entry in data if key.allows(str(entry["id"]))]
    return data


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def ready(request: Request) -> Response:
    """Ready when every model can answer now, or (scaled to zero) starts a replica for
    the first request that comes."""
    models = {name: group.routable() or group.waiter is not None
              for name, group in request.app.state.dispatcher.groups.items()}
    ok = all(models.values())
    return Response(orjson.dumps({"ready": ok, "models": models}),
                    status_code=200 if ok else 503, media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request) -> Response:
    """The OpenAPI document of every route above and in generation.py and the admin
    modules (llmgw.api.openapi), for this instance's request bounds."""
    return Response(request.app.state.openapi, media_type="application/json")


async def debug_route(request: Request) -> Response:
    """Dry run: which replica a chat or completion body would get, and why. Sends
    nothing and teaches the policy nothing (but a new session the session scorer places
    counts there for up to 30 s). An admin call (it shows every replica's
    scores), with the same body limit as /v1."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    try:
        authorize(request)
        body = await read_body(request.receive, request.headers,
                               request.app.state.max_body_bytes)
        endpoint: Endpoint = "chat" if b'"messages"' in body else "completions"
        parsed, req = parse_request(body, endpoint)
        # What /v1 would refuse gets the same 400 here, not a routing answer.
        check_request(req, request.app.state.request_bounds)
        model = dispatcher.target(req.model, request.headers, parsed)
        group, adapter = dispatcher.resolve(model, request.headers.get(MULTIPLEX_HEADER))
    except GatewayError as exc:
        return error_response(exc)
    ctx = await request_context(new_request_id(), group, endpoint, req.streamed,
                                request.headers, parsed, adapter)
    decision = dispatcher.explain(ctx, group)
    replica = decision.ranked[0].id if decision.ranked else None
    return Response(orjson.dumps({"model": group.name, "replica": replica,
                                  "policy": group.policy_name, **decision.as_dict()}),
                    media_type="application/json")
