"""A bound on the request headers, checked before any route reads them.

The server (uvicorn with httptools) takes headers of any size: one 8 MB header was
accepted, and whatever is keyed by a header (a session id) could keep it. This pure
ASGI middleware answers 431 in OpenAI's shape instead.
"""

from __future__ import annotations

import time
from itertools import chain

from starlette.types import ASGIApp, Receive, Scope, Send

from llmgw.api.errors import error_response
from llmgw.dispatcher import PATHS
from llmgw.errors import HeadersTooLarge

# Total bytes of header names and values. Clients send well under this (nginx refuses
# a request line or header above 8 KiB by default, Node 16 KiB in all); 64 KiB leaves
# room for long cookies and tracing baggage while a client can no longer make the
# gateway parse, route on or keep megabytes of headers.
MAX_HEADER_BYTES = 64 * 1024

# Generation requests are counted in the request metrics even when refused here.
_ENDPOINTS = {path: endpoint for endpoint, path in PATHS.items()}


class HeaderLimit:
    """Refuses HTTP requests whose headers add up to more than ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int = MAX_HEADER_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and too_large(scope, self.limit):
            await refuse(scope, receive, send, self.limit)
        else:
            await self.app(scope, receive, send)


def too_large(scope: Scope, limit: int = MAX_HEADER_BYTES) -> bool:
    # Summed in C (no Python frame per header): this runs on every model request.
    return sum(map(len, chain.from_iterable(scope["headers"]))) > limit


async def refuse(scope: Scope, receive: Receive, send: Send,
                 limit: int = MAX_HEADER_BYTES) -> None:
    """The 431 answer (counted in the request metrics for a model route)."""
    started = time.perf_counter()
    error = HeadersTooLarge(f"request headers are larger than {limit} bytes")
    endpoint = _ENDPOINTS.get(scope["path"])
    if endpoint is not None and scope["method"] == "POST":
        scope["app"].state.dispatcher.record_failure("", endpoint, error,
                                                     error.status_code, started)
    await error_response(error)(scope, receive, send)
