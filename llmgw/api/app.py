"""create_app: the FastAPI app around a built gateway."""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import orjson
from fastapi import FastAPI
from starlette.routing import Route

from llmgw.api import admin, keys, routes, tools
from llmgw.api import fleet as fleet_routes
from llmgw.api.errors import install_error_handlers
from llmgw.api.generation import GenerationRoute
from llmgw.api.header_limit import HeaderLimit
from llmgw.api.model_first import ModelRoutesFirst
from llmgw.api.openapi import openapi_schema
from llmgw.build import Gateway
from llmgw.config import GatewayConfig
from llmgw.fleet.controller import Fleet
from llmgw.fleet.reload import Reloader
from llmgw.protocol import ENDPOINTS
from llmgw.tools.toolset import ToolSet

if TYPE_CHECKING:
    from llmgw.api.mcp import MCPEndpoint

log = logging.getLogger("llmgw.api")


def create_app(gateway: Gateway, fleet: Fleet | None = None, reloader: Reloader | None = None,
               tool_set: ToolSet | None = None) -> ModelRoutesFirst:
    """``fleet`` and ``reloader``: what `llmgw up` runs beside the app (replicas started,
    scaled and reloaded); without them the admin fleet routes answer that there is none.
    ``tool_set``: the started tools (``tools:``); without it /v1/tools lists none."""

    tools_served = tool_set or ToolSet(gateway.config, [], gateway.metrics)
    mcp = _mcp_endpoint(tools_served, gateway)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            if mcp is None:
                yield
            else:
                async with mcp.running():
                    yield
        finally:
            if fleet is not None:  # no scaling decision while the gateway closes
                await fleet.stop_loop()
            await gateway.close()

    # No redirects for a trailing slash: an API client gets its answer or an
    # OpenAI-shaped 404/405, never a 307 it may not follow.
    # FastAPI's own /openapi.json would describe only APIRoutes, of which llmgw has none:
    # llmgw.api.openapi writes the document instead.
    app = ModelRoutesFirst(title="llmgw", docs_url=None, redoc_url=None, openapi_url=None,
                           lifespan=lifespan, redirect_slashes=False)
    app.state.dispatcher = gateway.dispatcher
    app.state.pool = gateway.pool
    app.state.metrics = gateway.metrics
    app.state.created = int(time.time())
    app.state.catalog = gateway.catalog
    app.state.tenancy = gateway.tenancy
    app.state.access_log = gateway.access_log
    app.state.fleet, app.state.reloader = fleet, reloader
    app.state.tools = tools_served
    # The other workers of this gateway (llmgw/workers), told of admin changes; None: one.
    app.state.peers = None
    _apply_server(app, gateway.config)
    if reloader is not None:
        reloader.listeners.append(lambda config: _apply_server(app, config))
    install_error_handlers(app)
    app.add_middleware(HeaderLimit)
    # Model routes are raw ASGI apps: no per-request Request/Response objects and one
    # disconnect watch per request (bench/overhead.py measured both), served ahead of
    # the middleware stack (llmgw.api.model_first) and listed in the router as well.
    model_routes = {spec.path: GenerationRoute(endpoint) for endpoint, spec in ENDPOINTS.items()}
    app.serve_first(dict(model_routes))
    app.router.routes += [Route(path, route, methods=["POST"])
                          for path, route in model_routes.items()]
    app.add_route("/v1/models", routes.list_models, methods=["GET"])
    app.add_route("/v1/models/{model:path}", routes.get_model, methods=["GET"])
    app.add_route("/v1/tools", tools.list_tools, methods=["GET"])
    app.add_route("/v1/tools/{name}", tools.call_tool, methods=["POST"])
    if mcp is not None:  # one route, no Mount: no /mcp -> /mcp/ redirect
        app.router.routes.append(Route("/mcp", mcp, methods=["GET", "POST", "DELETE"]))
    app.add_route("/health", routes.health, methods=["GET"])
    app.add_route("/ready", routes.ready, methods=["GET"])
    app.add_route("/metrics", routes.metrics, methods=["GET"])
    app.add_route("/openapi.json", routes.openapi, methods=["GET"])
    app.add_route("/debug/route", routes.debug_route, methods=["POST"])
    app.add_route("/admin/adapters", admin.list_adapters, methods=["GET"])
    app.add_route("/admin/adapters", admin.register_adapter, methods=["POST"])
    app.add_route("/admin/adapters/{name}", admin.remove_adapter, methods=["DELETE"])
    app.add_route("/admin/keys", keys.list_keys, methods=["GET"])
    app.add_route("/admin/keys", keys.create_key, methods=["POST"])
    app.add_route("/admin/keys/{name}", keys.revoke_key, methods=["DELETE"])
    app.add_route("/admin/tools/{name}/batch", tools.set_batch_bounds, methods=["POST"])
    app.add_route("/admin/status", fleet_routes.status, methods=["GET"])
    app.add_route("/admin/reload", fleet_routes.reload, methods=["POST"])
    return app


def _mcp_endpoint(tool_set: ToolSet, gateway: Gateway) -> MCPEndpoint | None:
    """/mcp when tools are served; its package (the ``llmgw[mcp]`` extra) is imported only
    then. Without the package, tools are served over /v1/tools alone (logged)."""
    if not tool_set.specs:
        return None
    try:
        from llmgw.api.mcp import MCPEndpoint
    except ImportError:
        log.warning("/mcp is off: the mcp package is not installed (pip install 'llmgw[mcp]')")
        return None
    return MCPEndpoint(tool_set, gateway.tenancy, gateway.config.server.host, _version())


def _version() -> str:
    try:
        return importlib.metadata.version("llmgw")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _apply_server(app: FastAPI, config: GatewayConfig) -> None:
    """The server settings the app reads per request; a reload changes them in place."""
    app.state.max_body_bytes = config.server.max_body_bytes
    app.state.admin_key = admin.admin_key(config.server.admin_key)
    app.state.request_bounds = config.server.request_bounds
    # Served by routes.openapi; rebuilt here so that a reload's new bounds show in it.
    app.state.openapi = orjson.dumps(openapi_schema(config.server.request_bounds))
