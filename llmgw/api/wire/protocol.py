"""uvicorn's httptools protocol, with the model routes served on llmgw's own cycle.

A POST to a model route's exact path (``ModelRoutesFirst.first_routes``) gets a
``WireCycle`` (llmgw.api.wire.cycle) in place of uvicorn's ``RequestResponseCycle``, and
goes to its route with no middleware or router in between; everything else (other
routes, other methods, upgrades, a percent-encoded path, ``limit_concurrency``) is
uvicorn's own, unchanged. uvicorn still owns the server: the listening sockets, the
lifespan, signals, keep-alive timers, pipelining, graceful shutdown.

The subclass leans on the protocol's methods (``_start_asgi_task``,
``on_response_complete``, ...) and attributes (``parser``, ``url``, ``headers``, ``scope``,
``cycle``, ``pipeline``, ``flow``, ...). ``serving_protocol`` checks that this uvicorn has
the methods and that its own set-up code names those attributes, and otherwise serves
with plain uvicorn (every route still works; the model routes take the ASGI path of
``ModelRoutesFirst``), logging why. Written against uvicorn 0.54.
"""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmgw.api.header_limit import refuse, too_large
from llmgw.api.model_first import ModelRoutesFirst
from llmgw.api.wire.cycle import Headers, WireCycle

log = logging.getLogger("llmgw.api")

# What the subclass calls of uvicorn's protocol (see the module docstring)...
_NEEDED = (
    "on_headers_complete",
    "connection_lost",
    "_start_asgi_task",
    "on_response_complete",
    "on_message_begin",
    "shutdown",
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
)
_SETTERS = ("__init__", "connection_made", "on_message_begin", "on_url", "on_header")


class ModelRoutesProtocol(HttpToolsProtocol):
    """Set by ``serving_protocol`` per app: the FastAPI app, its model routes by path and
    the headers every model answer carries (``x-llmgw-worker``)."""

    gateway_app: ModelRoutesFirst
    model_routes: dict[bytes, Any]
    extra_headers: Headers = []
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
            self._start_asgi_task(cycle, app)  # type: ignore[arg-type]
        else:  # pipelined behind a request still being answered: in order
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, app))  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        cycle = self.cycle
        super().connection_lost(exc)
        if isinstance(cycle, WireCycle):
            cycle.client_left()

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
