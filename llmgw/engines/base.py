"""The engine seam as the gateway sees it: an OpenAI-compatible HTTP server.

vLLM, SGLang and the embedded transformers engine all run as their own servers; the
gateway reaches each through an :class:`Engine` and relays bytes. Engine-specific
behaviour (health path, stats scraping, LoRA endpoints, abort) lives in subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar, Literal, Protocol

from llmgw.protocol import Endpoint
from llmgw.types import EngineStats

# One health check: "ok" (200), "down" (refused, reset or an error answer: the engine is
# not serving), "timeout" (no answer in time: maybe down, maybe busy; the pool decides).
Health = Literal["ok", "down", "timeout"]


class UpstreamResponse(Protocol):
    """An engine's answer whose status and headers have arrived; the body has not."""

    status: int

    async def read(self) -> bytes:
        """The whole body (non-streaming requests)."""
        ...

    def event_blocks(self) -> AsyncIterator[bytes]:
        """Server-sent events as they arrive: each item holds one or more complete
        ``data: ...\\n\\n`` events."""
        ...

    def close(self) -> None:
        """Drop the connection. Closing mid-body makes the engine abort the request."""
        ...


class Engine(Protocol):
    """One replica's engine server. Safe to share across tasks of one event loop."""

    url: str
    # The config's name of the engine type, for messages.
    engine_type: ClassVar[str]
    # The endpoints its servers answer (llmgw.protocol.ENDPOINTS); the gateway refuses
    # the others with UnsupportedEndpoint instead of relaying them.
    endpoints: ClassVar[frozenset[Endpoint]]

    async def health(self) -> Health:
        """Whether the engine answers its health route with 200 within the timeout."""
        ...

    async def stats(self) -> EngineStats | None:
        """Load and cache signals the engine reports, or None when it reports none or
        cannot be reached."""
        ...

    @staticmethod
    def body_fields(request_id: str) -> dict[str, str]:
        """Fields to merge into every request body so the engine knows the request by
        ``request_id`` (for ``abort``); empty for engines that abort on disconnect. The
        same for every replica of an engine type: read from the class."""
        ...

    async def abort(self, request_id: str) -> bool:
        """Stop the request explicitly, before its connection is closed. Never raises;
        False when the engine has no such call (closing the connection is enough)."""
        ...

    async def send(self, path: str, body: bytes) -> UpstreamResponse:
        """POST ``body`` (JSON) to ``path``. Raises ``UpstreamError`` if the engine cannot be
        reached or fails (5xx), ``UpstreamRejected`` on a 4xx answer."""
        ...
