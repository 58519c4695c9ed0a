"""The request path: model group -> policy.rank -> engine, with failover, accounting and
metrics. Knows nothing of HTTP frameworks; the API layer drives it.

Per request the gateway relays the client's own JSON body and the engine's own bytes,
touching the body only when it must (rename the model, ask for usage on a stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from llmgw.config import TimeoutConfig
from llmgw.engines.base import UpstreamResponse
from llmgw.engines.request_body import encode
from llmgw.engines.whole_answer import read_whole
from llmgw.errors import (
    FirstByteTimeout,
    GatewayError,
    ModelNotFound,
    NoReplica,
    UnsupportedEndpoint,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmgw.exchange import Exchange
from llmgw.lora.catalog import Adapter
from llmgw.lora.residency import Lease, SlotsBusy
from llmgw.metrics import ModelMetrics
from llmgw.model_group import ModelGroup
from llmgw.pool import Replica
from llmgw.protocol import ENDPOINTS, Endpoint
from llmgw.resilience.retry import failure_reason, retryable
from llmgw.routing.base import Decision
from llmgw.routing.session import session_key
from llmgw.routing.traffic_split import TrafficSplit
from llmgw.telemetry import NO_TRACING, Tracing
from llmgw.types import ReplicaView, RequestContext

log = logging.getLogger("llmgw.dispatcher")

PATHS = {name: spec.path for name, spec in ENDPOINTS.items()}

class Dispatcher:
    def __init__(
        self, groups: Mapping[str, ModelGroup], unknown_model: ModelMetrics,
        clock: Callable[[], float] = time.perf_counter,
        splits: Mapping[str, TrafficSplit] | None = None,
        split_counter: Callable[[str, str], None] = lambda alias, target: None,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.groups = dict(groups)
        self.tracing = tracing
        # Requests for models that do not exist are counted under one bounded label.
        self.unknown_model = unknown_model
        self._clock = clock
        # Served names that split traffic over several models (``aliases:``).
        self.splits: dict[str, TrafficSplit] = dict(splits or {})
        self._split_counter = split_counter

    def target(self, model: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> str:
        """The model a request for ``model`` goes to: itself, or for an alias the target
        its session sticks to (weighted at random without a session)."""
        split = self.splits.get(model)
        if split is None:
            return model
        target = split.pick(session_key(headers, body))
        self._split_counter(model, target)
        return target

    def group(self, model: str) -> ModelGroup:
        try:
            return self.groups[model]
        except KeyError:
            raise ModelNotFound(f"The model '{model}' does not exist.", param="model") from None

    def resolve(self, model: str, multiplexed: str | None = None
                ) -> tuple[ModelGroup, Adapter | None]:
        """The group and LoRA adapter a request names: ``model: <adapter>`` (as vLLM),
        ``model: <base>:<adapter>``, or the base in ``model`` and the adapter in the
        ``serve_multiplexed_model_id`` header (as Ray Serve)."""
        if multiplexed:
            group = self.group(model)
            return group, self._adapter_of(group, multiplexed, model)
        if model in self.groups:
            return self.groups[model], None
        base, colon, name = model.partition(":")
        if colon and base in self.groups:
            return self.groups[base], self._adapter_of(self.groups[base], name, model)
        for group in self.groups.values():
            adapter = group.lora.adapter(model) if group.lora else None
            if adapter is not None:
                return group, adapter
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")

    @staticmethod
    def _adapter_of(group: ModelGroup, name: str, asked: str) -> Adapter:
        adapter = group.lora.adapter(name) if group.lora else None
        if adapter is None:
            raise ModelNotFound(f"The adapter '{name}' of model '{group.name}' does not exist "
                                f"(asked for '{asked}').", param="model")
        return adapter

    @staticmethod
    def check_served(group: ModelGroup, endpoint: Endpoint) -> None:
        """Raises UnsupportedEndpoint when the model's engine does not serve ``endpoint``
        (or the model is disaggregated and the endpoint cannot be split)."""
        path = ENDPOINTS[endpoint].path
        if endpoint not in group.engine.endpoints:
            raise UnsupportedEndpoint(
                f"The model '{group.name}' runs on the {group.engine.engine_type} engine, "
                f"which does not serve {path}.", param="model")
        if group.disagg is not None and not ENDPOINTS[endpoint].disaggregates:
            raise UnsupportedEndpoint(
                f"The model '{group.name}' is served disaggregated (prefill and decode "
                f"pools); {path} is not served for it.", param="model")

    def upstream_body(self, group: ModelGroup, body: bytes, parsed: dict[str, Any],
                      stream: bool, wants_usage: bool, upstream_id: str,
                      adapter: Adapter | None = None, endpoint: Endpoint = "chat") -> bytes:
        """The client's bytes unless the engine must see something else."""
        rename = adapter is not None or parsed.get("model") != group.upstream_model
        force_usage = stream and not wants_usage and ENDPOINTS[endpoint].usage_option
        engine_fields = group.engine.body_fields(upstream_id)
        if not rename and not force_usage and not engine_fields:
            return body
        patched = {**parsed, **engine_fields}
        if rename:
            patched["model"] = group.upstream_model
        if adapter is not None and group.lora is not None:
            patched.update(group.lora.residency.request_fields(adapter.name))
        if force_usage:
            patched["stream_options"] = {**(parsed.get("stream_options") or {}),
                                         "include_usage": True}
        return encode(patched)

    async def open(self, ctx: RequestContext, group: ModelGroup, body: bytes,
                   upstream_id: str, explain: bool = False,
                   adapter: Adapter | None = None, pin: str | None = None) -> Exchange:
        """Pick a replica and send the request; try the next ranked replica when one cannot
        be reached or fails before answering. Nothing reached the client yet, so failover
        is safe here and nowhere later. ``pin``: that replica first while it is routable
        (the rounds of a tool loop share one engine's prefix cache)."""
        started = self._clock()
        deadline = _deadline(group.timeouts)
        if group.waiter is not None and not group.routable():  # scaled to zero: wait
            await group.waiter.wait(group.routable)
        group.retry_budget.requested()
        if group.disagg is not None:  # two legs on two pools; the decode leg comes back
            opened = await group.disagg.open(ctx, ENDPOINTS[ctx.endpoint].path, body, upstream_id,
                                             deadline, explain)
            exchange = Exchange(ctx, group, opened.replica, opened.upstream, started, deadline,
                                upstream_id)
            exchange.decision = opened.decision
            exchange.pd_path, exchange.prefill_replica = opened.path, opened.prefill
            return exchange
        views = group.views()
        ranked, decision = (self._rank_traced(ctx, group, views, explain)
                            if self.tracing.enabled else _rank(ctx, group, views, explain))
        if pin is not None:
            ranked.sort(key=lambda replica: replica.id != pin)
        if not ranked:
            raise NoReplica(f"no healthy replica for model '{group.name}'; retry shortly")
        error: UpstreamError | NoReplica | None = None
        if adapter is None and group.lora and ctx.adapter:
            adapter = group.lora.adapter(ctx.adapter)
        for attempt, replica in enumerate(ranked[: group.max_attempts]):
            if attempt:
                if not group.retry_budget.try_retry():
                    break
                replica.metrics.retries.inc()
            # Counted while being sent, so concurrent picks see it; the Exchange takes the
            # count over once the engine answered.
            replica.acquire()
            lease: Lease | None = None
            try:
                if adapter is not None:
                    assert group.lora is not None
                    with self.tracing.span("llmgw.lora.wait") as span:
                        if span is not None:
                            span.set_attributes({"llmgw.adapter": adapter.name,
                                                 "llmgw.replica": replica.id})
                        lease = await group.lora.ensure(replica.id, adapter)
                upstream = await _send(replica, ENDPOINTS[ctx.endpoint].path, body, deadline,
                                       group.timeouts.first_byte_s if ctx.stream else None)
                answer = None if ctx.stream else await read_whole(upstream, deadline)
            except UpstreamRejected:
                _give_back(replica, lease)
                replica.answered()  # a client's 4xx says nothing against the replica
                raise
            except UpstreamError as exc:
                _give_back(replica, lease)
                log.warning("replica %s/%s failed: %s", group.name, replica.id, exc.message)
                replica.failed(failure_reason(exc, ctx.stream), group.replicas)
                if isinstance(exc, UpstreamUnreachable):
                    replica.set_health(False)  # the health loop brings it back
                error = exc
                # It may have started generating: resent only if its engine is gone.
                if not retryable(exc, ctx.stream) and not await _engine_gone(replica, exc):
                    break
                continue
            except SlotsBusy as exc:
                _give_back(replica, lease)
                error = NoReplica(f"adapter '{ctx.adapter}' cannot be placed: {exc}")
                continue
            except BaseException:
                _give_back(replica, lease)
                raise
            replica.answered()
            group.policy.on_routed(ctx, replica.id)
            replica.metrics.add_routed(1)
            for shadow in group.shadows:
                shadow.observe(ctx, views, replica.id)
            exchange = Exchange(ctx, group, replica, upstream, started, deadline, upstream_id)
            exchange.decision = decision
            exchange.lease = lease
            exchange.answer = answer
            return exchange
        assert error is not None
        raise error

    def _rank_traced(self, ctx: RequestContext, group: ModelGroup, views: list[ReplicaView],
                     explain: bool) -> tuple[list[Replica], Decision | None]:
        """``_rank`` in a span; a recorded span is given the decision's scores (only
        ``explain`` returns it)."""
        with self.tracing.span("llmgw.route") as span:
            traced = span is not None and span.is_recording()
            ranked, decision = _rank(ctx, group, views, explain or traced)
            if traced and decision is not None:
                assert span is not None
                span.set_attributes({"llmgw.route.policy": group.policy_name,
                                     "llmgw.route.ranked": [r.id for r in ranked],
                                     "llmgw.route.decision": orjson.dumps(
                                         decision.as_dict()).decode()})
        return ranked, decision if explain else None

    def explain(self, ctx: RequestContext, group: ModelGroup) -> Decision:
        """The policy's decision with its reasons, without sending anything."""
        if group.disagg is not None:
            return group.disagg.explain(ctx)
        return group.policy.explain(ctx, group.views())

    def record_failure(self, model: str, endpoint: str, error: GatewayError | None,
                       status: int, started: float) -> None:
        """A request that ended before any engine answered (bad input, no replica, the
        client gone: status 499, counted as a disconnect too)."""
        group = self.groups.get(model)
        metrics = group.metrics if group is not None else self.unknown_model
        if error is not None:
            metrics.errors(error.code or error.type).inc()
        metrics.count_request(endpoint, status)
        metrics.request_duration.observe(self._clock() - started)
        if status == 499:  # nginx's "client closed request": the client left
            metrics.client_disconnects.inc()


def _rank(ctx: RequestContext, group: ModelGroup, views: list[ReplicaView],
          explain: bool) -> tuple[list[Replica], Decision | None]:
    """The group's replicas best first, and the policy's reasons when ``explain``."""
    if explain:
        decision = group.policy.explain(ctx, views)
        return [group.replica(v.id) for v in decision.ranked], decision
    return [group.replica(v.id) for v in group.policy.rank(ctx, views)], None


async def _engine_gone(replica: Replica, error: UpstreamError) -> bool:
    """The connection broke mid-request and the engine no longer takes connections: it
    died (llmgw.resilience.retry). Out of rotation until the health loop sees it back."""
    if not isinstance(error, UpstreamDisconnected):
        return False
    if await replica.engine.health() != "down":
        return False
    replica.set_health(False)
    return True


def _give_back(replica: Replica, lease: Lease | None) -> None:
    replica.release()
    if lease is not None:
        lease.release()


def _send(replica: Replica, path: str, body: bytes, deadline: float | None,
          first_byte_s: float | None) -> Awaitable[UpstreamResponse]:
    """``first_byte_s``: a stream's limit on waiting for the engine's headers. Without
    either limit (the default), the engine's own send: no coroutine of ours around it."""
    if deadline is None and first_byte_s is None:
        return replica.engine.send(path, body)
    return _send_timed(replica, path, body, deadline, first_byte_s)


async def _send_timed(replica: Replica, path: str, body: bytes, deadline: float | None,
                      first_byte_s: float | None) -> UpstreamResponse:
    first_byte = None if first_byte_s is None else \
        asyncio.get_running_loop().time() + first_byte_s
    if first_byte is not None and deadline is not None and deadline <= first_byte:
        first_byte = None  # the request's own deadline comes first
    until = first_byte if first_byte is not None else deadline
    if until is None:
        return await replica.engine.send(path, body)
    try:
        async with asyncio.timeout_at(until):
            return await replica.engine.send(path, body)
    except TimeoutError:
        if first_byte is not None:
            raise FirstByteTimeout(f"the engine sent no headers within {first_byte_s}s"
                                   ) from None
        raise UpstreamTimeout("the request timed out before the engine answered") from None


def _deadline(timeouts: TimeoutConfig) -> float | None:
    if timeouts.request_s is None:
        return None
    return asyncio.get_running_loop().time() + timeouts.request_s
