"""The admin API for API keys (``auth:``). Every call needs the admin key, as the other
admin routes do; client keys never open these.

    GET    /admin/keys          every key, without secrets or hashes
    POST   /admin/keys          {"name", "models", "rpm", "tpm", "max_concurrency",
                                 "priority", "weight", "tools"}
                                -> 201 {"key": <secret, shown only now>, ...}
    DELETE /admin/keys/{name}   revoked at once (configured keys too, until their hash
                                changes)

Changes are kept in ``server.state_dir`` before they take effect; one that cannot be kept
is not made (500 state_not_saved).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.admin import authorize, tell_peers
from llmgw.api.body import json_response, parse_body, read_limited
from llmgw.api.errors import error_response
from llmgw.config import Limits, Priority
from llmgw.config.auth import KEY_NAME, MAX_LIMIT
from llmgw.dispatcher import Dispatcher
from llmgw.errors import GatewayError, InvalidRequest
from llmgw.tenancy.gate import Tenancy
from llmgw.tools.toolset import ToolSet


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=KEY_NAME)
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    max_concurrency: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    priority: Priority = "interactive"
    weight: float = Field(default=1.0, gt=0, le=1000)
    # Tools (tools:) the key may list and call; null: every one.
    tools: list[str] | None = None




def _served_names(dispatcher: Dispatcher) -> set[str]:
    names = {*dispatcher.groups, *dispatcher.splits}
    for group in dispatcher.groups.values():
        if group.lora is not None:
            names |= {a.name for a in group.lora.catalog.for_base(group.name)}
    return names


def _check_names(spec: CreateKey, dispatcher: Dispatcher, tools: ToolSet) -> None:
    for field, asked, served in (("models", spec.models, _served_names(dispatcher)),
                                 ("tools", spec.tools, set(tools.specs))):
        unknown = sorted(set(asked or ()) - served)
        if unknown:
            raise InvalidRequest(f"{field}: not served here: {', '.join(unknown)[:500]}",
                                 param=field)


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
        _check_names(spec, request.app.state.dispatcher, request.app.state.tools)
        limits = Limits(rpm=spec.rpm, tpm=spec.tpm, max_concurrency=spec.max_concurrency)
        key, secret = tenancy.create(spec.name, spec.models, limits, spec.priority,
                                     spec.weight, spec.tools)
    except GatewayError as exc:
        return error_response(exc)
    await tell_peers(request, "keys")
    return json_response({"key": secret, **key.describe()}, 201)


async def revoke_key(request: Request) -> Response:
    tenancy: Tenancy = request.app.state.tenancy
    try:
        authorize(request)
        key = tenancy.revoke(request.path_params["name"])
    except GatewayError as exc:
        return error_response(exc)
    await tell_peers(request, "keys")
    return json_response({"name": key.name, "deleted": True})
