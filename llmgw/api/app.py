"""create_app: the FastAPI app around a built gateway."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from llmgw.api import admin, routes
from llmgw.api.errors import install_error_handlers
from llmgw.api.generation import GenerationRoute
from llmgw.api.header_limit import HeaderLimit
from llmgw.build import Gateway


def create_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    # No redirects for a trailing slash: an API client gets its answer or an
    # OpenAI-shaped 404/405, never a 307 it may not follow.
    app = FastAPI(title="llmgw", docs_url=None, redoc_url=None, lifespan=lifespan,
                  redirect_slashes=False)
    app.state.dispatcher = gateway.dispatcher
    app.state.pool = gateway.pool
    app.state.metrics = gateway.metrics
    app.state.max_body_bytes = gateway.config.server.max_body_bytes
    app.state.created = int(time.time())
    app.state.catalog = gateway.catalog
    app.state.admin_key = admin.admin_key(gateway.config.server.admin_key)
    install_error_handlers(app)
    app.add_middleware(HeaderLimit)
    # Generation routes are raw ASGI apps: no per-request Request/Response objects and
    # one disconnect watch per request (bench/overhead.py measured both).
    app.router.routes += [
        Route("/v1/chat/completions", GenerationRoute("chat"), methods=["POST"]),
        Route("/v1/completions", GenerationRoute("completions"), methods=["POST"]),
    ]
    app.add_route("/v1/models", routes.list_models, methods=["GET"])
    app.add_route("/health", routes.health, methods=["GET"])
    app.add_route("/ready", routes.ready, methods=["GET"])
    app.add_route("/metrics", routes.metrics, methods=["GET"])
    app.add_route("/debug/route", routes.debug_route, methods=["POST"])
    app.add_route("/admin/adapters", admin.list_adapters, methods=["GET"])
    app.add_route("/admin/adapters", admin.register_adapter, methods=["POST"])
    app.add_route("/admin/adapters/{name}", admin.remove_adapter, methods=["DELETE"])
    return app
