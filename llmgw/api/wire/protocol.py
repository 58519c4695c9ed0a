"""uvicorn's httptools protocol, with the model routes served on llmgw's own cycle.

A POST to a model route's exact path (``ModelRoutesFirst.first_routes``) gets a
``WireCycle`` (llmgw.api.wire.cycle) in place of uvicorn's ``RequestResponseCycle``, and
goes to its route with no middleware or router in between; everything else (other
routes, other methods, upgrades, a percent-encoded path, ``limit_concurrency``) is
uvicorn's own, unchanged. uvicorn still owns the server: the listening sockets, the
lifespan, signals, pipelining, graceful shutdown. The keep-alive timeout of idle
connections is kept by one timer per server (llmgw.api.wire.keep_alive) instead of one
per request.

The subclass leans on the protocol's methods (``_start_asgi_task``,
``on_response_complete``, ...) and attributes (``parser``, ``url``, ``headers``, ``scope``,
``cycle``, ``pipeline``, ``flow``, ...). ``serving_protocol`` checks that this uvicorn has
the methods and that its own set-up code names those attributes, and otherwise serves
with plain uvicorn (every route still works; the model routes take the ASGI path of
``ModelRoutesFirst``), logging why. Written against uvicorn 0.54.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmgw.api.header_limit import refuse, too_large
from llmgw.api.model_first import ModelRoutesFirst
from llmgw.api.wire.cycle import Headers, WireCycle
from llmgw.api.wire.keep_alive import IdleConnections

log = logging.getLogger("llmgw.api")

# What the subclass calls of uvicorn's protocol (see the module docstring)...
_NEEDED = (
    "on_headers_complete",
    "connection_lost",
    "_start_asgi_task",
    "on_response_complete",
    "on_message_begin",
    "shutdown",
    "_unset_keepalive_if_required",
    "timeout_keep_alive_handler",
)
# ... and the attributes it reads, which uvicorn's own methods must name (set or use).
_ATTRIBUTES = (
    "parser",
    "url",
    "headers",
    "scope",
    "cycle",
    "pipeline",
    "flow",
    "transport",
    "server_state",
    "expect_100_continue",
    "limit_concurrency",
    "root_path",
    "loop",
    "tasks",
    "config",
    "timeout_keep_alive",
)
_SETTERS = ("__init__", "connection_made", "on_message_begin", "on_url", "on_header")


class ModelRoutesProtocol(HttpToolsProtocol):
    """Set by ``serving_protocol`` per app: the FastAPI app, its model routes by path,
    the headers every model answer carries (``x-llmgw-worker``) and the server's idle
    connections."""

    gateway_app: ModelRoutesFirst
    model_routes: dict[bytes, Any]
    extra_headers: Headers = []
    idle_connections: IdleConnections
    # The server's headers and their rendering (``_server_lines``), shared by every
    # connection of the app's server.
    rendered_lines: tuple[Headers, bytes] | None = None

    def on_headers_complete(self) -> None:
        path, _, query = self.url.partition(b"?")
        route = self._model_route(path)
        if route is None:
            super().on_headers_complete()
            return
        http_version = self.parser.get_http_version()
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]  # typed for uvicorn's keys
        scope["method"] = "POST"
        if http_version != "1.1":
            scope["http_version"] = http_version
        scope["path"] = path.decode("ascii")
        scope["raw_path"] = path
        scope["query_string"] = query
        scope["app"] = self.gateway_app  # what the route reads its collaborators from
        existing = self.cycle
        cycle = WireCycle(
            scope,
            self.transport,
            self.flow,
            self._server_lines(),
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            expect_100_continue=self.expect_100_continue,
            on_response=self.on_response_complete,
        )
        self.cycle = cycle  # type: ignore[assignment]
        app = route if not too_large(scope) else refuse
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, app)
        else:  # pipelined behind a request still being answered: in order
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        self._unset_keepalive_if_required()  # uvicorn's own call is only when exc is None
        if isinstance(cycle, WireCycle):
            cycle.client_left()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """uvicorn's, and a model request's cycle is given its task (a disconnect cancels
        that task: llmgw.api.disconnect)."""
        if not isinstance(cycle, WireCycle):
            super()._start_asgi_task(cycle, app)
            return
        context = (
            contextvars.Context() if getattr(self.config, "reset_contextvars", False) else None
        )
        task = cycle.task = self.loop.create_task(cycle.run_asgi(app), context=context)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        """uvicorn's: the next pipelined request starts, or the connection waits for one
        until its keep-alive timeout, noted in ``idle_connections`` (no timer of its
        own)."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_connections.idle(self, self.loop, self.timeout_keep_alive)

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this when data arrives (and when the connection is lost cleanly).
        self.idle_connections.deadlines.pop(self, None)

    def _server_lines(self) -> bytes:
        """The head lines every model answer starts with: the server's own headers
        (``date``, ``server``: uvicorn replaces that list once a second) and
        ``extra_headers``, rendered once per list rather than per answer."""
        defaults = self.server_state.default_headers
        rendered = type(self).rendered_lines
        if rendered is None or rendered[0] is not defaults:
            lines = b"".join(
                b"%s: %s\r\n" % (name, value) for name, value in (*defaults, *self.extra_headers)
            )
            rendered = type(self).rendered_lines = (defaults, lines)
        return rendered[1]

    def _model_route(self, path: bytes) -> Any | None:
        """The model route a request for ``path`` (the URL before any query) goes to on
        the wire, or None (uvicorn's path). An absolute-form URL matches no route: uvicorn
        parses it."""
        if self.parser.get_method() != b"POST" or self.parser.should_upgrade():
            return None
        if self.limit_concurrency is not None or self.root_path:
            return None
        return self.model_routes.get(path)


def serving_protocol(
    app: ModelRoutesFirst, extra_headers: Headers | None = None
) -> type[HttpToolsProtocol] | str:
    """The protocol class uvicorn serves ``app`` with: ``ModelRoutesProtocol`` bound to
    it, or "httptools" (plain uvicorn) when this uvicorn's protocol is not the one the
    subclass was written against."""
    named = _names_uvicorn_uses()
    missing = [name for name in _NEEDED if not hasattr(HttpToolsProtocol, name)]
    missing += [f"self.{name}" for name in _ATTRIBUTES if name not in named]
    if missing:
        log.warning(
            "uvicorn's protocol lacks %s: model routes are served through ASGI", ", ".join(missing)
        )
        return "httptools"
    return type(
        "BoundModelRoutesProtocol",
        (ModelRoutesProtocol,),
        {
            "gateway_app": app,
            "model_routes": {
                path.encode("ascii"): route for path, route in app.first_routes.items()
            },
            "extra_headers": list(extra_headers or ()),
            "idle_connections": IdleConnections(),
        },
    )


def _names_uvicorn_uses() -> set[str]:
    """The names the methods of uvicorn's protocol that set up its state refer to (its
    attributes among them): a renamed attribute is missing here."""
    names: set[str] = set()
    for method in _SETTERS:
        code = getattr(getattr(HttpToolsProtocol, method, None), "__code__", None)
        if code is not None:
            names.update(code.co_names)
    return names
