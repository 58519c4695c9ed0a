"""The admin API: LoRA adapters registered and removed at runtime. Every call needs
``Authorization: Bearer <admin key>`` (``server.admin_key`` or LLMGW_ADMIN_KEY); without
a configured key (or with a blank one) the admin API refuses everything.

    GET    /admin/adapters          adapters, their base model, source and residency
    POST   /admin/adapters          {"model": base, "name": ..., "source": dir under roots}
    DELETE /admin/adapters/{name}   unregister; unloaded everywhere once its requests end

Every answer is JSON; every error OpenAI-shaped, whatever the body (bounded by
``server.max_body_bytes``). A change the state file cannot keep is not made (500).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.body import json_response, parse_body, read_limited
from llmgw.api.errors import error_response
from llmgw.dispatcher import Dispatcher
from llmgw.errors import (
    AdminRequestRejected,
    ChangeNotSaved,
    GatewayError,
    Unauthorized,
)
from llmgw.lora.catalog import Adapter, AdapterCatalog, CatalogError, StateNotSaved

ADMIN_KEY_ENV = "LLMGW_ADMIN_KEY"
log = logging.getLogger("llmgw.api")


class Peers(Protocol):
    """The other processes of this gateway (``server.workers`` above 1:
    llmgw/workers/worker.py); ``app.state.peers`` is None with one process."""

    async def changed(self, what: Literal["keys", "adapters", "reload"]) -> list[str]:
        """Apply in every other process the change just made here; returns what failed."""
        ...


async def tell_peers(request: Request, what: Literal["keys", "adapters", "reload"]) -> None:
    """An admin change made in this worker reaches the others before the call answers, so
    the next request sees it whichever worker takes it."""
    peers: Peers | None = request.app.state.peers
    if peers is None:
        return
    for problem in await peers.changed(what):
        log.error("the %s change was made here but not applied in %s", what, problem)


class RegisterAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(min_length=1)
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    source: str = Field(min_length=1)


def admin_key(configured: str | None) -> str | None:
    """The key in effect: LLMGW_ADMIN_KEY, else the config's. Blank is no key (the admin
    API is then disabled), and surrounding whitespace is not part of a key (HTTP strips
    it from the header anyway)."""
    for candidate in (os.environ.get(ADMIN_KEY_ENV), configured):
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return None


def authorize(request: Request) -> None:
    key: str | None = request.app.state.admin_key
    if key is None or not key.strip():
        raise Unauthorized("the admin API is disabled: set server.admin_key or "
                           f"{ADMIN_KEY_ENV}")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    # An empty token never authenticates, whatever the key compares equal to.
    if scheme.lower() != "bearer" or not token \
            or not hmac.compare_digest(token.encode(), key.strip().encode()):
        raise Unauthorized("missing or wrong admin key (Authorization: Bearer <key>)")


def _describe(dispatcher: Dispatcher, adapter: Adapter) -> dict[str, Any]:
    group = dispatcher.groups.get(adapter.base)
    lora = group.lora if group is not None else None
    return {"name": adapter.name, "model": adapter.base, "source": adapter.source,
            "origin": adapter.origin,
            "resident_on": lora.residency.holders(adapter.name) if lora else [],
            "request_rate": round(lora.rates.rate(adapter.name, time.monotonic()), 4)
            if lora else 0.0}




def _rejected(exc: CatalogError) -> GatewayError:
    if isinstance(exc, StateNotSaved):  # the gateway's fault, not the request's
        return ChangeNotSaved(exc.message)
    return AdminRequestRejected(exc.message, status=exc.status, param=exc.param)


async def list_adapters(request: Request) -> Response:
    try:
        authorize(request)
    except GatewayError as exc:
        return error_response(exc)
    catalog: AdapterCatalog = request.app.state.catalog
    dispatcher: Dispatcher = request.app.state.dispatcher
    return json_response({"object": "list",
                  "data": [_describe(dispatcher, a) for a in catalog.all()]})


async def register_adapter(request: Request) -> Response:
    catalog: AdapterCatalog = request.app.state.catalog
    dispatcher: Dispatcher = request.app.state.dispatcher
    try:
        authorize(request)
        body = await read_limited(request, request.app.state.max_body_bytes)
        spec = parse_body(RegisterAdapter, body)
        try:
            adapter = catalog.register(spec.model, spec.name, spec.source,
                                       reserved_names=dispatcher.groups)
        except CatalogError as exc:
            raise _rejected(exc) from None
    except GatewayError as exc:
        return error_response(exc)
    await tell_peers(request, "adapters")
    return json_response(_describe(dispatcher, adapter), 201)


async def remove_adapter(request: Request) -> Response:
    catalog: AdapterCatalog = request.app.state.catalog
    dispatcher: Dispatcher = request.app.state.dispatcher
    try:
        authorize(request)
        try:
            adapter = catalog.remove(request.path_params["name"])
        except CatalogError as exc:
            raise _rejected(exc) from None
    except GatewayError as exc:
        return error_response(exc)
    group = dispatcher.groups.get(adapter.base)
    if group is not None and group.lora is not None:
        await group.lora.remove(adapter)
    await tell_peers(request, "adapters")
    return json_response({"name": adapter.name, "deleted": True})
