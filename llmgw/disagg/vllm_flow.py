"""A disaggregated request on vLLM: the prefill leg first (``vllm_protocol``), then the
decode leg with what the prefill returned.

Fail-safe: the prefill leg has its own time limit (``prefill_timeout_s``). When no prefill
replica answers in time or at all, the request is served aggregated on the decode replica
already chosen: a vLLM decode engine computes the prefill itself when no KV arrives. An
engine's 4xx is the client's answer either way, so it passes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from llmgw.disagg import vllm_protocol
from llmgw.disagg.decide import Reason
from llmgw.disagg.legs import DecodeUpstream, Legs, deadline_passed
from llmgw.disagg.plan import Plan
from llmgw.engines.base import UpstreamResponse
from llmgw.errors import (
    UpstreamDisconnected,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.pool import Replica
from llmgw.types import RequestContext

log = logging.getLogger("llmgw.disagg")


class PrefillFailed(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


class VLLMFlow:
    serves_aggregated = True

    def __init__(self, prefill_timeout_s: float) -> None:
        self.prefill_timeout_s = prefill_timeout_s

    def splittable(self, parsed: Mapping[str, Any]) -> bool:
        return vllm_protocol.splittable(parsed)

    async def open(self, legs: Legs, plan: Plan, ctx: RequestContext, path: str,
                   parsed: Mapping[str, Any], body: bytes, upstream_id: str,
                   deadline: float | None) -> tuple[Replica, UpstreamResponse]:
        if plan.path != "disaggregated":
            replica, upstream, _ = await legs.open_decode(ctx, plan.decode, path, body, deadline)
            return replica, upstream
        try:
            params = await self._prefill(legs, plan, ctx, path, parsed, deadline)
        except PrefillFailed as failed:
            log.warning("%s: prefill leg failed (%s); serving aggregated", ctx.model,
                        failed.reason)
            plan.fall_back(failed.reason)
            replica, upstream, _ = await legs.open_decode(ctx, plan.decode, path, body, deadline)
            return replica, upstream
        decode_body = vllm_protocol.decode_body(parsed, params)
        replica, upstream, sent_at = await legs.open_decode(
            ctx, plan.decode, path, decode_body, deadline)
        legs.decode_split(ctx)
        return replica, DecodeUpstream(upstream, legs.metrics, sent_at, legs.clock)

    async def _prefill(self, legs: Legs, plan: Plan, ctx: RequestContext, path: str,
                       parsed: Mapping[str, Any], deadline: float | None
                       ) -> dict[str, Any] | None:
        """The prefill's kv_transfer_params; raises PrefillFailed to fall back, or
        UpstreamRejected / UpstreamTimeout (the request's own limit) to fail."""
        loop = asyncio.get_running_loop()
        timeout_at = loop.time() + self.prefill_timeout_s
        if deadline is not None:
            timeout_at = min(timeout_at, deadline)
        body = vllm_protocol.prefill_body(parsed)
        for attempt, replica in enumerate(plan.prefill[: legs.max_attempts]):
            if attempt and not legs.may_retry(replica):
                break
            plan.prefill_on(replica)
            try:
                answer = await self._leg(legs, ctx, replica, path, body, timeout_at)
            except UpstreamRejected:
                replica.answered()
                raise
            except (UpstreamUnreachable, UpstreamDisconnected) as exc:
                # Not reached, or cut off before it answered (killed): a prefill leg sends
                # the client nothing, so the next prefill replica may take it.
                legs.failed(replica, exc, ctx.stream)
                continue  # the next prefill replica, if any
            except (TimeoutError, UpstreamTimeout):
                if deadline_passed(deadline, loop):
                    raise UpstreamTimeout("the request exceeded its time limit during its "
                                          "prefill leg") from None
                legs.failed(replica, TimeoutError(), ctx.stream)  # past prefill_timeout_s
                raise PrefillFailed("prefill_timeout") from None
            except UpstreamError as exc:
                legs.failed(replica, exc, ctx.stream)
                raise PrefillFailed("prefill_error") from None
            replica.answered()
            return vllm_protocol.transfer_params(answer)
        raise PrefillFailed("prefill_unreachable")

    @staticmethod
    async def _leg(legs: Legs, ctx: RequestContext, replica: Replica, path: str, body: bytes,
                   timeout_at: float) -> bytes:
        replica.acquire()
        started, upstream, ok = legs.clock(), None, False
        try:
            with legs.leg_span("prefill", replica):
                async with asyncio.timeout_at(timeout_at):
                    upstream = await replica.engine.send(path, body)
                    legs.prefill_policy.on_routed(ctx, replica.id)
                    replica.metrics.routed.inc()
                    answer = await upstream.read()
            ok = True
        finally:
            # Closing an unfinished leg (time limit, client gone) makes vLLM abort it.
            if upstream is not None:
                upstream.close()
            replica.release()
            legs.prefill_done(ctx, replica, ok)
        legs.metrics.prefill_leg.observe(legs.clock() - started)
        return answer
