"""A disaggregated request on SGLang: both legs at once with the same bootstrap fields
(``sglang_protocol``); the client's answer comes from the decode leg.

An SGLang decode server cannot serve a request without its prefill server, so there is
no aggregated fallback here. Fail-safe instead: the request is not handed to the client
until the decode leg produced its first token (streaming) or its answer; until then a
prefill leg that fails, a decode leg that fails, or ``prefill_timeout_s`` passing aborts
both legs. The pair is tried again with the replicas still routable when the failure
allows a retry (``resilience.retry``: nothing can have been generated for the client) and
the retry budget has one; otherwise the client gets a clean 502 / 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from llmgw.config import SGLANG_BOOTSTRAP_PORT
from llmgw.disagg import sglang_protocol
from llmgw.disagg.legs import DecodeUpstream, Legs, PrefillLeg, send_within
from llmgw.disagg.plan import Plan
from llmgw.engines.base import UpstreamResponse
from llmgw.engines.whole_answer import whole_answer
from llmgw.errors import (
    GatewayError,
    NoReplica,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.pool import Replica
from llmgw.resilience.retry import retryable
from llmgw.types import RequestContext

T = TypeVar("T")


class PrefillLegFailed(Exception):
    """The prefill leg ended in error before the decode leg produced anything."""


class SGLangFlow:
    serves_aggregated = False

    def __init__(self, prefill_timeout_s: float, rng: random.Random) -> None:
        self.prefill_timeout_s = prefill_timeout_s
        self.rng = rng

    def splittable(self, parsed: Mapping[str, Any]) -> bool:
        return True  # several sequences get one bootstrap room each

    async def open(self, legs: Legs, plan: Plan, ctx: RequestContext, path: str,
                   parsed: Mapping[str, Any], body: bytes, upstream_id: str,
                   deadline: float | None) -> tuple[Replica, UpstreamResponse]:
        if plan.path != "disaggregated":
            raise NoReplica(f"no healthy prefill replica for model '{ctx.model}': SGLang "
                            f"decode servers cannot serve without one; retry shortly")
        prefills, decodes = list(plan.prefill), list(plan.decode)
        error: GatewayError | None = None
        for attempt in range(legs.max_attempts):
            if not prefills or not decodes:
                break
            prefill, decode = prefills[0], decodes[0]
            if attempt and not legs.may_retry(decode):
                break
            try:
                return await self._pair(legs, plan, ctx, prefill, decode, path, parsed,
                                        upstream_id, deadline)
            except UpstreamError as exc:
                # Both legs were aborted and nothing reached the client. Tried again with
                # the replicas still routable (a failed leg's may be out now) when the
                # failure allows it (resilience.retry), e.g. a leg cut off before its
                # stream began; never past the request's own time limit.
                error = exc
                if not retryable(exc, ctx.stream):
                    raise
                for pool in (prefills, decodes):
                    pool[:] = [r for r in pool if r.routable]
        raise error or NoReplica(f"no reachable prefill/decode pair for model '{ctx.model}'")

    async def _pair(self, legs: Legs, plan: Plan, ctx: RequestContext, prefill: Replica,
                    decode: Replica, path: str, parsed: Mapping[str, Any], rid: str,
                    deadline: float | None) -> tuple[Replica, UpstreamResponse]:
        host, port = bootstrap_of(prefill)
        body = sglang_protocol.with_bootstrap(parsed, host, port, self.rng)
        stream = bool(parsed.get("stream"))
        plan.prefill_on(prefill)
        leg = PrefillLeg(legs, ctx, prefill, path, body, rid, stream, self.prefill_timeout_s)
        legs.prefill_policy.on_routed(ctx, prefill.id)
        prefill.metrics.routed.inc()
        timeout_at = asyncio.get_running_loop().time() + self.prefill_timeout_s
        if deadline is not None:
            timeout_at = min(timeout_at, deadline)
        decode.acquire()
        sent_at, upstream = legs.clock(), None
        first: bytes | None = None
        blocks: AsyncIterator[bytes] | None = None
        try:
            with legs.leg_span("decode", decode):
                async with asyncio.timeout_at(timeout_at) as limit:
                    upstream = await _unless_failed(leg, send_within(decode, path, body, None),
                                                    limit, deadline)
                    if stream:
                        blocks = upstream.event_blocks()
                        first = await _unless_failed(leg, anext(blocks, b""), limit, deadline)
                    else:  # the body within the attempt: see llmgw.engines.whole_answer
                        upstream = await whole_answer(upstream, None)
        except BaseException as exc:
            decode.release()
            legs.in_background(_abandon(decode, upstream, rid, leg))
            if isinstance(exc, UpstreamError):  # the decode leg's own failure
                legs.failed(decode, exc, stream)
            raise _translated(exc, leg) from None
        decode.answered()
        legs.decode_policy.on_routed(ctx, decode.id)
        decode.metrics.routed.inc()
        legs.decode_split(ctx)

        def end_prefill() -> None:
            if not leg.task.done():
                legs.in_background(leg.stop())
        return decode, DecodeUpstream(upstream, legs.metrics, sent_at, legs.clock,
                                      first=first if stream else None, blocks=blocks,
                                      on_close=end_prefill)


async def _unless_failed(leg: PrefillLeg, work: Awaitable[T], limit: asyncio.Timeout,
                         deadline: float | None) -> T:
    """``work``'s result, unless the prefill leg fails first (then PrefillLegFailed).
    Once the prefill leg has ended well, ``limit`` (the prefill time limit) gives way to
    the request's own ``deadline``: the KV is across, what is left is decoding, which a
    request that is not streamed waits for in full."""
    task = asyncio.ensure_future(work)
    ended = asyncio.ensure_future(leg.ended.wait())
    try:
        await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            if leg.failed:
                raise PrefillLegFailed()
            limit.reschedule(deadline)
        return await task
    finally:
        ended.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _abandon(decode: Replica, upstream: UpstreamResponse | None, rid: str,
                   leg: PrefillLeg) -> None:
    """Abort both legs of a pair that will not serve the request."""
    await decode.engine.abort(rid)  # before the connection closes (see engines/sglang.py)
    if upstream is not None:
        upstream.close()
    await leg.stop()


def _translated(exc: BaseException, leg: PrefillLeg) -> BaseException:
    if isinstance(exc, PrefillLegFailed):
        error = leg.error
        if isinstance(error, UpstreamUnreachable | UpstreamRejected):
            return error
        if isinstance(error, TimeoutError | UpstreamTimeout):
            return UpstreamTimeout("the prefill leg exceeded its time limit")
        return UpstreamError(f"the prefill leg failed: {getattr(error, 'message', error)}")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the decode leg produced nothing within the prefill time "
                               "limit (disaggregation.prefill_timeout_s)")
    return exc


def bootstrap_of(prefill: Replica) -> tuple[str, int]:
    """Where the decode server fetches a prefill replica's KV: its host, at the bootstrap
    port its launcher (or the config, when attached) gave it."""
    host = urlsplit(prefill.engine.url).hostname or "127.0.0.1"
    return host, prefill.address.bootstrap_port or SGLANG_BOOTSTRAP_PORT
