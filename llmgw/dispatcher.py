"""The request path: model group -> policy.rank -> engine, with failover, accounting and
metrics. Knows nothing of HTTP frameworks; the API layer turns its results into responses.

Per request the gateway relays the client's own JSON body and the engine's own bytes,
touching the body only when it must (rename the model, ask for usage on a stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from llmgw.config import TimeoutConfig
from llmgw.engines.base import UpstreamResponse
from llmgw.errors import (
    GatewayError,
    ModelNotFound,
    NoReplica,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.metrics import Metrics
from llmgw.pool import Replica
from llmgw.routing.base import RoutingPolicy
from llmgw.types import Outcome, RequestContext

log = logging.getLogger("llmgw.dispatcher")

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
DONE_EVENT = b"data: [DONE]\n\n"
# The engine's usage chunk, asked for on every stream so token metrics are exact.
_USAGE_MARK = b'"choices":[]'


@dataclass
class ModelGroup:
    """One served model name -> its replicas and the policy that picks among them."""

    name: str
    upstream_model: str
    replicas: list[Replica]
    policy: RoutingPolicy
    policy_name: str
    timeouts: TimeoutConfig
    max_attempts: int

    def __post_init__(self) -> None:
        self._by_id = {r.id: r for r in self.replicas}

    def replica(self, replica_id: str) -> Replica:
        return self._by_id[replica_id]


class Exchange:
    """One request in flight on one replica. ``finish`` releases everything exactly once,
    whatever path the request takes out (done, error, timeout, client gone)."""

    def __init__(
        self, dispatcher: Dispatcher, ctx: RequestContext, group: ModelGroup,
        replica: Replica, upstream: UpstreamResponse, started: float, deadline: float | None,
    ) -> None:
        self.ctx, self.group, self.replica, self.upstream = ctx, group, replica, upstream
        self._dispatcher = dispatcher
        self.started = started
        self.deadline = deadline
        self.first_chunk_at: float | None = None
        self.usage: Mapping[str, Any] | None = None
        self.chunks = 0
        self._finished = False

    async def read_all(self) -> bytes:
        """The engine's whole (non-streaming) answer."""
        try:
            async with asyncio.timeout_at(self.deadline):
                body = await self.upstream.read()
        except TimeoutError:
            raise UpstreamTimeout("the request exceeded its time limit") from None
        self.usage = _usage_of(body)
        return body

    async def relay(self, client_wants_usage: bool) -> AsyncIterator[bytes]:
        """The engine's SSE events, as bytes to send on. Raises GatewayError mid-stream;
        the caller turns it into an error event. The caller also enforces ``deadline``:
        a timeout scope must not span this generator's yields."""
        async for event in self.upstream.events():
            if event.startswith(b"data: [DONE]"):
                break
            if self.first_chunk_at is None:
                self.first_chunk_at = time.perf_counter()
            if _USAGE_MARK in event:
                self.usage = _usage_of(event[6:])
                if not client_wants_usage:
                    continue
            else:
                self.chunks += 1
            yield event

    def record_error(self, error: GatewayError) -> None:
        self._dispatcher.record_error(self.group.name, error)

    def finish(self, outcome: Outcome, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        self.upstream.close()
        self._dispatcher.finished(self, outcome, status)


class Dispatcher:
    def __init__(
        self, groups: Mapping[str, ModelGroup], metrics: Metrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.groups = dict(groups)
        self.metrics = metrics
        self._clock = clock

    def group(self, model: str) -> ModelGroup:
        try:
            return self.groups[model]
        except KeyError:
            raise ModelNotFound(
                f"The model '{model}' does not exist.", param="model"
            ) from None

    def upstream_body(self, group: ModelGroup, body: bytes, parsed: dict[str, Any],
                      stream: bool, wants_usage: bool) -> bytes:
        """The client's bytes unless the engine must see something else."""
        rename = group.upstream_model != group.name
        force_usage = stream and not wants_usage
        if not rename and not force_usage:
            return body
        patched = dict(parsed)
        if rename:
            patched["model"] = group.upstream_model
        if force_usage:
            patched["stream_options"] = {**(parsed.get("stream_options") or {}),
                                         "include_usage": True}
        return orjson.dumps(patched)

    async def open(self, ctx: RequestContext, group: ModelGroup, body: bytes) -> Exchange:
        """Pick a replica and send the request; try the next ranked replica when one cannot
        be reached or fails before answering. Nothing reached the client yet, so failover
        is safe here and nowhere later."""
        started = self._clock()
        deadline = _deadline(group.timeouts)
        candidates = [r.view() for r in group.replicas if r.healthy]
        ranked = group.policy.rank(ctx, candidates) if candidates else []
        if not ranked:
            raise NoReplica(f"no healthy replica for model '{group.name}'; retry shortly")
        error: UpstreamError | None = None
        for attempt, view in enumerate(ranked[: group.max_attempts]):
            replica = group.replica(view.id)
            if attempt:
                self.metrics.upstream_retries.labels(group.name, replica.id).inc()
            try:
                upstream = await self._send(replica, PATHS[ctx.endpoint], body, deadline)
            except UpstreamRejected:
                raise
            except UpstreamError as exc:
                log.warning("replica %s/%s failed: %s", group.name, replica.id, exc.message)
                if isinstance(exc, UpstreamUnreachable):
                    replica.set_health(False)  # the health loop brings it back
                error = exc
                continue
            group.policy.on_routed(ctx, replica.id)
            self.metrics.routing_decisions.labels(group.name, group.policy_name, replica.id).inc()
            replica.acquire()
            return Exchange(self, ctx, group, replica, upstream, started, deadline)
        assert error is not None
        raise error

    async def _send(
        self, replica: Replica, path: str, body: bytes, deadline: float | None
    ) -> UpstreamResponse:
        # Count the request on the replica while it is being sent, so concurrent picks
        # see it; the Exchange takes over the count once the engine answered.
        replica.acquire()
        try:
            async with asyncio.timeout_at(deadline):
                return await replica.engine.send(path, body)
        except TimeoutError:
            raise UpstreamTimeout("the request timed out before the engine answered") from None
        finally:
            replica.release()

    def finished(self, ex: Exchange, outcome: Outcome, status: int) -> None:
        ex.replica.release()
        ex.group.policy.on_done(ex.ctx, ex.replica.id, outcome)
        self.record(ex.group.name, ex.ctx.endpoint, status, ex.started)
        m, name = self.metrics, ex.group.name
        if ex.first_chunk_at is not None:
            m.time_to_first_token.labels(name).observe(ex.first_chunk_at - ex.started)
            if ex.chunks > 1:
                itl = (self._clock() - ex.first_chunk_at) / (ex.chunks - 1)
                m.inter_token_latency.labels(name).observe(itl)
        if ex.usage:
            prompt, completion = ex.usage.get("prompt_tokens"), ex.usage.get("completion_tokens")
            if isinstance(prompt, int):
                m.prompt_tokens.labels(name).inc(prompt)
            if isinstance(completion, int):
                m.completion_tokens.labels(name).inc(completion)
                m.request_tokens.labels(name).observe(completion)
        if outcome == "cancelled":
            m.client_disconnects.labels(name).inc()

    def record(self, model: str, endpoint: str, status: int, started: float) -> None:
        self.metrics.requests.labels(model, endpoint, str(status)).inc()
        self.metrics.request_duration.labels(model).observe(self._clock() - started)

    def record_error(self, model: str, error: GatewayError) -> None:
        self.metrics.request_errors.labels(model, error.code or error.type).inc()


def _deadline(timeouts: TimeoutConfig) -> float | None:
    if timeouts.request_s is None:
        return None
    return asyncio.get_running_loop().time() + timeouts.request_s


def _usage_of(payload: bytes) -> Mapping[str, Any] | None:
    try:
        usage = orjson.loads(payload).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None
