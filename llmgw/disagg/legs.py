"""The legs of a disaggregated request: sending one with its time limit, the decode
pool's failover, the decode leg's response as the client's relay sees it, and a prefill
leg that runs beside its decode leg (SGLang).

Every leg holds its replica's in-flight count from the moment it is sent until it ends,
and every exit path (answer, error, time limit, client gone) closes its connection, which
makes vLLM and SGLang abort the engine request; SGLang gets an explicit abort first.
Legs are requests like any other to the resilience layer: a failed leg counts against
its replica (outlier ejection, within its own pool's cap), an answer ends its streak, and
a leg tried again elsewhere spends the model's retry budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from llmgw.engines.base import UpstreamResponse
from llmgw.engines.whole_answer import whole_answer
from llmgw.errors import (
    GatewayError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.metrics import PDMetrics
from llmgw.pool import Replica
from llmgw.resilience.budget import RetryBudget
from llmgw.resilience.retry import failure_reason
from llmgw.routing.base import RoutingPolicy
from llmgw.telemetry import NO_SPAN, NO_TRACING, Span, Tracing
from llmgw.types import RequestContext

log = logging.getLogger("llmgw.disagg")


async def send_within(replica: Replica, path: str, body: bytes,
                      timeout_at: float | None) -> UpstreamResponse:
    """POST one leg; raises TimeoutError past ``timeout_at`` (event loop time)."""
    if timeout_at is None:
        return await replica.engine.send(path, body)
    async with asyncio.timeout_at(timeout_at):
        return await replica.engine.send(path, body)


def deadline_passed(deadline: float | None, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the request's own time limit (event loop time) has run out."""
    return deadline is not None and loop.time() >= deadline


@dataclass
class Legs:
    """What both protocols' flows share: the two policies, the decode pool's failover and
    the model's P/D metrics. Lives as long as the model; used from the event loop only."""

    prefill_policy: RoutingPolicy
    decode_policy: RoutingPolicy
    metrics: PDMetrics
    max_attempts: int
    # Seconds a decode engine gets to answer (headers) before the next one is tried.
    decode_timeout_s: float = 60.0
    clock: Callable[[], float] = time.perf_counter
    # The model's retry budget, shared with the dispatcher (which counts the requests).
    budget: RetryBudget = field(default_factory=RetryBudget)
    # Both pools, filled as replicas join and emptied as they leave (Disaggregation).
    prefill: list[Replica] = field(default_factory=list)
    decode: list[Replica] = field(default_factory=list)
    tracing: Tracing = NO_TRACING
    # Aborts of legs the request no longer waits for (kept so they are not collected).
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    async def open_decode(self, ctx: RequestContext, ranked: list[Replica], path: str,
                          body: bytes, deadline: float | None
                          ) -> tuple[Replica, UpstreamResponse, float]:
        """Send the decode leg to the best decode replica that answers; the next ones are
        tried when one cannot be reached, when a non-streaming answer breaks off after its
        headers, or, streaming, when one does not answer within ``decode_timeout_s``.
        Returns the replica (its in-flight count held for the caller), its answer and when
        it was sent. ``deadline``: the request's own limit (event loop time)."""
        error: UpstreamError | None = None
        loop = asyncio.get_running_loop()
        for attempt, replica in enumerate(ranked[: self.max_attempts]):
            if attempt and not self.may_retry(replica):
                break
            replica.acquire()
            sent_at = self.clock()
            # An engine answers a stream at once and a non-streamed request when it is
            # done: only the first is a time to answer; the second is the whole request,
            # bounded by the request's own limit alone.
            timeout_at = loop.time() + self.decode_timeout_s if ctx.stream else None
            if deadline is not None:
                timeout_at = deadline if timeout_at is None else min(timeout_at, deadline)
            try:
                try:
                    with self.leg_span("decode", replica):
                        upstream = await send_within(replica, path, body, timeout_at)
                        if not ctx.stream:  # the body within the attempt: see whole_answer
                            upstream = await whole_answer(upstream, deadline)
                except TimeoutError:
                    raise UpstreamTimeout(f"decode replica {replica.id} did not answer in "
                                          f"time") from None
            except UpstreamRejected:
                replica.release()
                raise
            except UpstreamError as exc:
                replica.release()
                log.warning("decode replica %s failed: %s", replica.id, exc.message)
                self.failed(replica, exc, ctx.stream)
                if isinstance(exc, UpstreamTimeout) and deadline_passed(deadline, loop):
                    # The request's own limit: no other replica has time left.
                    raise UpstreamTimeout("the request exceeded its time limit during its "
                                          "decode leg") from None
                error = exc
                continue
            except BaseException:
                replica.release()
                raise
            replica.answered()
            self.decode_policy.on_routed(ctx, replica.id)
            replica.metrics.routed.inc()
            return replica, upstream, sent_at
        assert error is not None
        raise error

    def may_retry(self, replica: Replica) -> bool:
        """Whether the model's retry budget lets a leg be tried again on ``replica``."""
        if not self.budget.try_retry():
            return False
        replica.metrics.retries.inc()
        return True

    def failed(self, replica: Replica, error: UpstreamError | TimeoutError,
               stream: bool) -> None:
        """A leg failed before the client got a byte: counted against its replica (a leg
        past its own time limit as a timeout), and a replica that cannot be reached or
        broke off is out until a health check passes."""
        reason = "timeout" if isinstance(error, TimeoutError) else failure_reason(error, stream)
        replica.failed(reason, self.pool_of(replica))
        if isinstance(error, UpstreamUnreachable | UpstreamDisconnected):
            replica.set_health(False)  # the health loop brings it back

    def pool_of(self, replica: Replica) -> Sequence[Replica]:
        return self.prefill if replica.role == "prefill" else self.decode

    def leg_span(self, leg: Literal["prefill", "decode"],
                 replica: Replica) -> AbstractContextManager[Span | None]:
        """The span over one leg (``llmgw.pd.prefill`` / ``llmgw.pd.decode``), naming its
        replica; the engine request inside it is its child."""
        if not self.tracing.enabled:
            return NO_SPAN
        return self._traced_leg(leg, replica)

    @contextlib.contextmanager
    def _traced_leg(self, leg: str, replica: Replica) -> Iterator[Span | None]:
        with self.tracing.span(f"llmgw.pd.{leg}") as span:
            if span is not None:
                span.set_attributes({"llmgw.replica": replica.id, "llmgw.pd.leg": leg})
            yield span

    def decode_split(self, ctx: RequestContext) -> None:
        """The decode leg of a split request: its engine will count the transferred KV as
        cached, which says nothing of its own prefix cache, so the decode policy's
        prediction is not calibrated against it."""
        self.decode_policy.take_prediction(ctx)

    def prefill_done(self, ctx: RequestContext, replica: Replica, ok: bool) -> None:
        self.prefill_policy.on_done(ctx, replica.id, "ok" if ok else "upstream_error")
        # The prefill engine reports no cache usage the gateway reads: drop the prediction.
        self.prefill_policy.take_prediction(ctx)

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (an abort) without making the request wait for it, even when the
        request's own task is being cancelled."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class DecodeUpstream:
    """The decode leg's answer as the client relay reads it. Times the leg (to the
    first token, to the end) and, when closed, ends the prefill leg if one still runs.
    ``first`` is a block already read from ``blocks`` (to learn that the leg started)."""

    def __init__(self, inner: UpstreamResponse, metrics: PDMetrics, sent_at: float,
                 clock: Callable[[], float], *, first: bytes | None = None,
                 blocks: AsyncIterator[bytes] | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self._inner, self._metrics, self._sent_at, self._clock = inner, metrics, sent_at, clock
        self.status = inner.status
        self._first, self._blocks, self._on_close = first, blocks, on_close
        self._first_seen = first is not None
        self._closed = False
        if first is not None:
            metrics.decode_first_token.observe(clock() - sent_at)

    async def read(self) -> bytes:
        body = await self._inner.read()
        self._seen_first()
        return body

    async def event_blocks(self) -> AsyncIterator[bytes]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for block in self._blocks or self._inner.event_blocks():
            self._seen_first()
            yield block

    def _seen_first(self) -> None:
        if not self._first_seen:
            self._first_seen = True
            self._metrics.decode_first_token.observe(self._clock() - self._sent_at)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inner.close()
        self._metrics.decode_leg.observe(self._clock() - self._sent_at)
        if self._on_close is not None:
            self._on_close()


class PrefillLeg:
    """A prefill leg sent beside its decode leg (SGLang): runs in its own task, drains
    the prefill server's answer, holds the replica's in-flight count until it ends and
    sets ``ended`` then; ``error`` says why it failed, if it did."""

    def __init__(self, legs: Legs, ctx: RequestContext, replica: Replica, path: str,
                 body: bytes, rid: str, stream: bool, timeout_s: float) -> None:
        self.legs, self.ctx, self.replica, self.rid = legs, ctx, replica, rid
        self.error: GatewayError | TimeoutError | None = None
        self.ended = asyncio.Event()
        replica.acquire()
        self.task = asyncio.create_task(self._run(path, body, stream, timeout_s))

    async def _run(self, path: str, body: bytes, stream: bool, timeout_s: float) -> None:
        started, upstream = self.legs.clock(), None
        try:
            with self.legs.leg_span("prefill", self.replica):
                async with asyncio.timeout(timeout_s):
                    upstream = await self.replica.engine.send(path, body)
                    if stream:
                        async for _ in upstream.event_blocks():
                            pass
                    else:
                        await upstream.read()
            self.legs.metrics.prefill_leg.observe(self.legs.clock() - started)
            self.replica.answered()
        except (GatewayError, TimeoutError) as exc:
            self.error = exc
            if isinstance(exc, UpstreamRejected):
                self.replica.answered()
            elif isinstance(exc, UpstreamError | TimeoutError):
                self.legs.failed(self.replica, exc, stream)
            if isinstance(exc, TimeoutError):
                await self.replica.engine.abort(self.rid)  # before the connection closes
        finally:
            if upstream is not None:
                upstream.close()
            self.replica.release()
            self.legs.prefill_done(self.ctx, self.replica, self.error is None)
            self.ended.set()

    @property
    def failed(self) -> bool:
        return self.ended.is_set() and self.error is not None

    async def stop(self) -> None:
        """Abort the leg if it still runs: SGLang's abort by rid, then the connection
        closes (SGLang 0.5.18-19 forget a rid whose stream was cancelled first)."""
        if self.task.done():
            return
        await self.replica.engine.abort(self.rid)
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
