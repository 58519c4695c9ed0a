"""The admin API for API keys (``auth:``). Every call needs the admin key, as the other
admin routes do; client keys never open these.

    GET    /admin/keys          every key, without secrets or hashes
    POST   /admin/keys          {"name", "models", "rpm", "tpm", "max_concurrency",
                                 "priority", "weight"} -> 201 {"key": <secret, shown only now>, ...}
    DELETE /admin/keys/{name}   revoked at once (configured keys too, until their hash
                                changes)

Changes are kept in ``server.state_dir`` before they take effect; one that cannot be kept
is not made (500 state_not_saved).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.admin import authorize
from llmgw.api.body import json_response, parse_body, read_limited
from llmgw.api.errors import error_response
from llmgw.config import Limits, Priority
from llmgw.config.auth import KEY_NAME, MAX_LIMIT
from llmgw.dispatcher import Dispatcher
from llmgw.errors import GatewayError, InvalidRequest
from llmgw.tenancy.gate import Tenancy


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=KEY_NAME)
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    priority: Priority = "interactive"
    weight: float = Field(default=1.0, gt=0, le=1000)




def _served_names(dispatcher: Dispatcher) -> set[str]:
    names = {*dispatcher.groups, *dispatcher.splits}
    for group in dispatcher.groups.values():
        if group.lora is not None:
            names |= {a.name for a in group.lora.catalog.for_base(group.name)}
    return names


def _check_models(spec: CreateKey, dispatcher: Dispatcher) -> None:
    unknown = sorted(set(spec.models or ()) - _served_names(dispatcher))
    if unknown:
        raise InvalidRequest(f"models: not served here: {', '.join(unknown)[:500]}",
                             param="models")


async def list_keys(request: Request) -> Response:
    try:
        authorize(request)
    except GatewayError as exc:
        return error_response(exc)
    tenancy: Tenancy = request.app.state.tenancy
    return json_response({"object": "list", "data": [k.describe() for k in tenancy.ring.all()]})


async def create_key(request: Request) -> Response:
    tenancy: Tenancy = request.app.state.tenancy
    try:
        authorize(request)
        spec = parse_body(CreateKey, await read_limited(request, request.app.state.max_body_bytes))
        _check_models(spec, request.app.state.dispatcher)
        limits = Limits(rpm=spec.rpm, tpm=spec.tpm, max_concurrency=spec.max_concurrency)
        key, secret = tenancy.create(spec.name, spec.models, limits, spec.priority,
                                     spec.weight)
    except GatewayError as exc:
        return error_response(exc)
    return json_response({"key": secret, **key.describe()}, 201)


async def revoke_key(request: Request) -> Response:
    tenancy: Tenancy = request.app.state.tenancy
    try:
        authorize(request)
        key = tenancy.revoke(request.path_params["name"])
    except GatewayError as exc:
        return error_response(exc)
    return json_response({"name": key.name, "deleted": True})
