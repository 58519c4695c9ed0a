"""The FastAPI app with the model routes served ahead of its middleware stack.

A model request (POST to a path of ``llmgw.protocol.ENDPOINTS``) is the hot path: it goes
straight from the server to its ``GenerationRoute``, past FastAPI's per-request telemetry
checks, Starlette's error, body-limit and exception middlewares and the router's scan of
every route (bench/overhead.py: those layers were a quarter of the gateway's CPU per
request). What those layers would give it, it has itself: the header bound (the same
check and 431 as ``HeaderLimit``), OpenAI-shaped errors for whatever goes wrong, its
access log line and its spans (``GenerationRoute``). Every other request, and a model
path asked with another method (405), takes the full stack. The model routes stay in
the router too, so the app's route table lists them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from llmgw.api.app_state import AppState
from llmgw.api.header_limit import refuse, too_large


class ModelRoutesFirst(FastAPI):
    """A FastAPI app that dispatches ``serve_first``'s routes before its own stack."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = AppState()  # read on every model request (llmgw.api.app_state)
        self._first: dict[str, ASGIApp] = {}

    def serve_first(self, routes: dict[str, ASGIApp]) -> None:
        """POSTs to these exact paths go to their app directly (module docstring)."""
        self._first.update(routes)

    @property
    def first_routes(self) -> dict[str, ASGIApp]:
        """The routes served ahead of the stack, by path (llmgw.api.wire serves them on
        its own cycle)."""
        return dict(self._first)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = self._first.get(scope["path"])
            if route is not None:
                scope["app"] = self  # what the stack would have set: routes read app.state
                if too_large(scope):
                    await refuse(scope, receive, send)
                else:
                    await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
