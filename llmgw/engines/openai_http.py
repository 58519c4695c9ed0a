"""A client for any OpenAI-compatible engine server, shared by every engine type.

Requests go over llmgw.engines.http1, the gateway's own keep-alive HTTP/1.1 client
(bench/overhead.py: aiohttp was the largest part of the gateway's CPU per request).
Health checks, metrics scrapes and the control calls of subclasses (abort, adapters)
stay on an aiohttp session: a few requests a second, where its features cost nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any, ClassVar

import aiohttp
import orjson

from llmgw.engines.base import Health
from llmgw.engines.http1.connection import ResponseBroken
from llmgw.engines.http1.pool import ConnectFailed, HTTPClient, Response
from llmgw.engines.stats import StatsNames, stats_from_text
from llmgw.errors import (
    AnswerBroken,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamUnreachable,
)
from llmgw.protocol import ENDPOINTS, Endpoint
from llmgw.telemetry import NO_TRACING, Tracing
from llmgw.types import EngineStats


class HTTPUpstreamResponse:
    __slots__ = ("_response", "status")

    def __init__(self, response: Response) -> None:
        self._response = response
        self.status = response.status

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except ResponseBroken as exc:
            raise AnswerBroken(f"engine connection broke: {exc}") from None

    async def event_blocks(self) -> AsyncIterator[bytes]:
        """Complete SSE events, as many as have arrived per read, each ending in a blank
        line. Relaying a block in one write, not one write per event, is what keeps the
        per-token cost low (bench/overhead.py, sse1000)."""
        pending = b""
        chunk = self._response.chunk
        try:
            while data := await chunk():
                pending += data
                if b"\r" in data:  # sse-starlette and others frame with CRLF
                    pending = pending.replace(b"\r\n", b"\n")
                end = pending.rfind(b"\n\n")
                if end < 0:
                    continue
                block, pending = pending[: end + 2], pending[end + 2 :]
                yield block
        except ResponseBroken as exc:
            raise AnswerBroken(f"engine stream broke: {exc}") from None
        if pending.strip():
            yield pending.rstrip(b"\n") + b"\n\n"

    def close(self) -> None:
        self._response.close()


class OpenAIHTTPEngine:
    """Talks to ``url`` (no trailing slash, no ``/v1``): requests over ``client``'s pool
    for the URL, health and metrics over the shared aiohttp ``session``.

    Subclasses for specific engines set where health and metrics live and how the
    metrics are named; this generic one reports no stats.
    """

    health_path: ClassVar[str] = "/health"
    metrics_path: ClassVar[str | None] = None
    stats_names: ClassVar[StatsNames] = StatsNames()
    engine_type: ClassVar[str] = "openai"
    # Any OpenAI-compatible server: every endpoint is relayed, and one it does not serve
    # answers with its own 4xx, passed through.
    endpoints: ClassVar[frozenset[Endpoint]] = frozenset(ENDPOINTS)

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        client: HTTPClient,
        *,
        connect_timeout_s: float = 5.0,
        health_timeout_s: float = 2.0,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.url = url
        self._session = session
        self._tracing = tracing
        # No read timeout: a long generation is never cut here. Request deadlines and a
        # stream's first-byte limit are explicit config, enforced by the dispatcher.
        self._pool = client.pool(url, connect_timeout_s=connect_timeout_s)
        self._health_timeout = aiohttp.ClientTimeout(total=health_timeout_s)

    async def health(self) -> Health:
        try:
            async with self._session.get(
                self.url + self.health_path, timeout=self._health_timeout
            ) as response:
                return "ok" if response.status == 200 else "down"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError:
            return "down"

    async def stats(self) -> EngineStats | None:
        """The engine's load and cache signals, or None when unavailable."""
        if self.metrics_path is None:
            return None
        try:
            async with self._session.get(
                self.url + self.metrics_path, timeout=self._health_timeout
            ) as response:
                if response.status != 200:
                    return None
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
            return None
        return stats_from_text(text, self.stats_names)

    @staticmethod
    def body_fields(request_id: str) -> dict[str, str]:
        return {}

    async def abort(self, request_id: str) -> bool:
        # vLLM, the embedded engine and most OpenAI servers abort when the connection
        # closes, which the gateway always does for a request it gives up on.
        return False

    def send(self, path: str, body: bytes) -> Coroutine[Any, Any, HTTPUpstreamResponse]:
        # Untraced, the post itself is returned: no coroutine of its own to wrap it.
        if not self._tracing.enabled:
            return self._post(path, body, b"")
        return self._traced_send(path, body)

    async def _traced_send(self, path: str, body: bytes) -> HTTPUpstreamResponse:
        with self._tracing.span("llmgw.engine", kind="client") as span:
            assert span is not None
            span.set_attributes({"url.full": self.url + path, "http.request.method": "POST"})
            # The engine continues the trace under this span (vLLM does, when it traces).
            lines = b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
                             for name, value in self._tracing.inject({}).items())
            answer = await self._post(path, body, lines)
            span.set_attribute("http.response.status_code", answer.status)
            return answer

    async def _post(self, path: str, body: bytes, headers: bytes) -> HTTPUpstreamResponse:
        try:
            response = await self._pool.post(path, body, headers)
        # Whether the request may have reached the engine decides whether it may be
        # resent (llmgw.resilience.retry): connecting failed -> it did not.
        except ConnectFailed as exc:
            raise UpstreamUnreachable(f"engine at {self.url} unreachable: {exc}") from None
        except ResponseBroken as exc:
            if exc.lost:
                raise UpstreamDisconnected(f"engine at {self.url} closed the connection "
                                           f"before answering: {exc}") from None
            raise UpstreamError(f"engine at {self.url} failed: {exc}") from None
        if response.status < 400:
            return HTTPUpstreamResponse(response)
        raise await _upstream_failure(response, path)


async def _upstream_failure(response: Response, path: str) -> Exception:
    """Turn an engine's error answer into our error, keeping its status and message."""
    try:
        raw = await response.read()
    except ResponseBroken:
        raw = b""
    message, param, code = _error_fields(raw)
    if response.status >= 500:
        return UpstreamFailed(f"engine failed with {response.status}: {message}")
    if response.status == 404 and message == "Not Found":  # a web framework's own 404
        message = f"The engine does not serve {path} for this model (404 Not Found)."
    return UpstreamRejected(message, status=response.status, param=param, code=code)


def _error_fields(raw: bytes) -> tuple[str, str | None, str | None]:
    """Engines shape errors as OpenAI's ``{"error": {...}}`` (vLLM >= 0.10, us) or as
    ``{"object": "error", "message": ...}`` (older vLLM, SGLang)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")[:500] or "no message", None, None
    err = data.get("error", data) if isinstance(data, dict) else {}
    if not isinstance(err, dict):
        return str(err)[:500], None, None
    code = err.get("code")
    return (
        str(err.get("message") or err.get("detail") or "no message"),
        err.get("param") if isinstance(err.get("param"), str) else None,
        code if isinstance(code, str) else None,
    )
