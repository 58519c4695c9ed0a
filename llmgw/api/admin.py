"""The admin API: LoRA adapters registered and removed at runtime. Every call needs
``Authorization: Bearer <admin key>`` (``server.admin_key`` or LLMGW_ADMIN_KEY); without
a configured key the admin API refuses everything.

    GET    /admin/adapters          adapters, their base model, source and residency
    POST   /admin/adapters          {"model": base, "name": ..., "source": dir under roots}
    DELETE /admin/adapters/{name}   unregister and unload everywhere
"""

from __future__ import annotations

import hmac
import os
import time
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.errors import error_response
from llmgw.dispatcher import Dispatcher
from llmgw.errors import AdminRequestRejected, GatewayError, InvalidRequest, Unauthorized
from llmgw.lora.catalog import Adapter, AdapterCatalog, CatalogError

ADMIN_KEY_ENV = "LLMGW_ADMIN_KEY"


class RegisterAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(min_length=1)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(min_length=1)


def admin_key(configured: str | None) -> str | None:
    return os.environ.get(ADMIN_KEY_ENV) or configured


def _authorize(request: Request) -> None:
    key: str | None = request.app.state.admin_key
    if key is None:
        raise Unauthorized("the admin API is disabled: set server.admin_key or "
                           f"{ADMIN_KEY_ENV}")
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("missing or wrong admin key (Authorization: Bearer <key>)")


def _describe(dispatcher: Dispatcher, adapter: Adapter) -> dict[str, Any]:
    group = dispatcher.groups.get(adapter.base)
    lora = group.lora if group is not None else None
    return {"name": adapter.name, "model": adapter.base, "source": adapter.source,
            "origin": adapter.origin,
            "resident_on": lora.residency.holders(adapter.name) if lora else [],
            "request_rate": round(lora.rates.rate(adapter.name, time.monotonic()), 4)
            if lora else 0.0}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def list_adapters(request: Request) -> Response:
    try:
        _authorize(request)
    except GatewayError as exc:
        return error_response(exc)
    catalog: AdapterCatalog = request.app.state.catalog
    dispatcher: Dispatcher = request.app.state.dispatcher
    return _json({"object": "list",
                  "data": [_describe(dispatcher, a) for a in catalog.all()]})


async def register_adapter(request: Request) -> Response:
    catalog: AdapterCatalog = request.app.state.catalog
    dispatcher: Dispatcher = request.app.state.dispatcher
    try:
        _authorize(request)
        try:
            spec = RegisterAdapter.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"],
                                 param=param) from None
        try:
            adapter = catalog.register(spec.model, spec.name, spec.source,
                                       reserved_names=dispatcher.groups)
        except CatalogError as exc:
            raise AdminRequestRejected(exc.message, status=exc.status, param=exc.param) from None
    except GatewayError as exc:
        return error_response(exc)
    return _json(_describe(dispatcher, adapter), 201)


async def remove_adapter(request: Request) -> Response:
    catalog: AdapterCatalog = request.app.state.catalog
    dispatcher: Dispatcher = request.app.state.dispatcher
    name = request.path_params["name"]
    try:
        _authorize(request)
        try:
            adapter = catalog.remove(name)
        except CatalogError as exc:
            raise AdminRequestRejected(exc.message, status=exc.status, param=exc.param) from None
    except GatewayError as exc:
        return error_response(exc)
    group = dispatcher.groups.get(adapter.base)
    if group is not None and group.lora is not None:
        await group.lora.residency.unload_everywhere(adapter.name)
        group.lora.rates.forget(adapter.name)
    return _json({"name": adapter.name, "deleted": True})
