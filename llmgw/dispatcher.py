"""The request path: model group -> policy.rank -> engine, with failover, accounting and
metrics. Knows nothing of HTTP frameworks; the API layer drives it.

Per request the gateway relays the client's own JSON body and the engine's own bytes,
touching the body only when it must (rename the model, ask for usage on a stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmgw.admission import FairQueue
from llmgw.config import TimeoutConfig
from llmgw.disagg.orchestrator import Disaggregation
from llmgw.engines.base import Engine, UpstreamResponse
from llmgw.engines.prompt_tokens import PromptTokenizer
from llmgw.engines.request_body import encode
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
from llmgw.lora.catalog import Adapter
from llmgw.lora.group import LoraGroup
from llmgw.lora.residency import Lease, SlotsBusy
from llmgw.metrics import ModelMetrics
from llmgw.pool import Replica, ReplicaWait
from llmgw.protocol import ENDPOINTS, Endpoint, normalized_usage
from llmgw.resilience.budget import RetryBudget
from llmgw.resilience.retry import failure_reason, retryable
from llmgw.resilience.stall import until_idle
from llmgw.routing.base import Decision, Need, RoutingPolicy
from llmgw.routing.session import session_key
from llmgw.routing.traffic_split import TrafficSplit
from llmgw.shadow import Shadow
from llmgw.telemetry import NO_TRACING, Tracing
from llmgw.types import Outcome, ReplicaView, RequestContext

log = logging.getLogger("llmgw.dispatcher")

PATHS = {name: spec.path for name, spec in ENDPOINTS.items()}
DONE_EVENT = b"data: [DONE]\n\n"
_DONE = b"data: [DONE]"


@dataclass
class ModelGroup:
    """One served model name -> its replicas and the policy that picks among them.

    Replicas join and leave at run time: the group is the pool's membership listener
    for its model (``added`` / ``removed``) and passes each change on to whatever it
    keeps per replica (policies' memories, LoRA residency, the PD pools). The request
    path reads ``replicas`` afresh on every request."""

    name: str
    upstream_model: str
    # The engine client class: what it adds to request bodies (``body_fields``).
    engine: type[Engine]
    policy: RoutingPolicy
    policy_name: str
    timeouts: TimeoutConfig
    max_attempts: int
    metrics: ModelMetrics
    # Candidate policies that see every request but decide nothing (shadow.py).
    shadows: list[Shadow] = field(default_factory=list)
    # The model's tokenizer, when a policy routes on the prompt's tokens.
    tokenizer: PromptTokenizer | None = None
    # LoRA adapters multiplexed over the replicas (lora: in the config).
    lora: LoraGroup | None = None
    # Prefill-decode disaggregation: prefill and decode pools among ``replicas``; then
    # ``policy`` is the decode pool's.
    disagg: Disaggregation | None = None
    # Requests wait here while the model has no routable replica (scaled to zero).
    waiter: ReplicaWait | None = None
    # Requests past the replicas' admission limit wait here (admission:); the API layer
    # acquires a slot before ``Dispatcher.open`` and releases it when the request ends.
    admission: FairQueue | None = None
    replicas: list[Replica] = field(default_factory=list)
    # How many retries the model may spend (llmgw.resilience.budget).
    retry_budget: RetryBudget = field(default_factory=RetryBudget)
    _by_id: dict[str, Replica] = field(init=False, repr=False)
    # What the live and shadow policies need computed per request.
    needs: frozenset[Need] = field(init=False)

    def __post_init__(self) -> None:
        self._by_id = {r.id: r for r in self.replicas}
        self.needs = self.policy.needs.union(*(s.policy.needs for s in self.shadows))
        if self.disagg is not None:
            self.needs |= self.disagg.needs

    def replica(self, replica_id: str) -> Replica:
        return self._by_id[replica_id]

    def views(self) -> list[ReplicaView]:
        """The replicas a request may go to now: ready (not draining) and healthy."""
        return [r.view() for r in self.replicas if r.routable]

    def routable(self) -> bool:
        return any(r.routable and r.role != "prefill" for r in self.replicas)

    def serving_replicas(self) -> int:
        """Replicas that answer requests now (a disaggregated model's decode pool)."""
        return sum(1 for r in self.replicas if r.routable and r.role != "prefill")

    def added(self, replica: Replica) -> None:
        self.replicas.append(replica)
        self._by_id[replica.id] = replica
        if self.lora is not None:
            self.lora.added(replica)
        if self.disagg is not None:
            self.disagg.added(replica)
        if self.waiter is not None:
            self.waiter.notify()
        if self.admission is not None:
            self.admission.poke()

    def removed(self, replica: Replica) -> None:
        if self._by_id.pop(replica.id, None) is None:
            return
        self.replicas.remove(replica)
        for policy in (self.policy, *(s.policy for s in self.shadows)):
            policy.forget(replica.id)
        if self.lora is not None:
            self.lora.removed(replica)
        if self.disagg is not None:
            self.disagg.removed(replica)


class Exchange:
    """One request in flight on one replica. It holds the replica's in-flight count from
    ``Dispatcher.open`` on; ``finish`` releases everything exactly once, whatever path the
    request takes out (done, error, timeout, client gone)."""

    def __init__(
        self, ctx: RequestContext, group: ModelGroup, replica: Replica,
        upstream: UpstreamResponse, started: float, deadline: float | None,
        upstream_id: str,
    ) -> None:
        self.ctx, self.group, self.replica, self.upstream = ctx, group, replica, upstream
        self.upstream_id = upstream_id
        self.started = started
        self.deadline = deadline
        self.first_chunk_at: float | None = None
        self.usage: Mapping[str, Any] | None = None
        self.decision: Decision | None = None
        self.lease: Lease | None = None  # the LoRA adapter held for this request
        # Disaggregated models: the path taken and the prefill replica, if any.
        self.pd_path: str | None = None
        self.prefill_replica: str | None = None
        self.events = 0
        # The stream event that carries the usage (chat's usage chunk, asked for on every
        # stream so token metrics are exact; Responses' response.completed).
        self._usage_mark = ENDPOINTS[ctx.endpoint].usage_mark
        self._finished = False

    async def read_all(self) -> bytes:
        """The engine's whole (non-streaming) answer."""
        try:
            if self.deadline is None:
                body = await self.upstream.read()
            else:
                async with asyncio.timeout_at(self.deadline):
                    body = await self.upstream.read()
        except TimeoutError:
            raise UpstreamTimeout("the request exceeded its time limit") from None
        self.usage = _usage_of(body)
        return body

    async def relay(self, client_wants_usage: bool) -> AsyncIterator[bytes]:
        """The engine's SSE events, in blocks as they arrive, without ``[DONE]`` (the caller
        ends the stream). Raises GatewayError mid-stream. The caller enforces
        ``deadline``: a timeout scope must not span this generator's yields."""
        blocks = self.upstream.event_blocks()
        if (idle_s := self.group.timeouts.stream_idle_s) is not None:
            blocks = until_idle(blocks, idle_s)
        try:
            async for block in blocks:
                if self.first_chunk_at is None:
                    self.first_chunk_at = time.perf_counter()
                done_at = _done_offset(block)
                if done_at >= 0:
                    block = block[:done_at]
                if self._usage_mark is not None and self._usage_mark in block:
                    block = self._take_usage(block, client_wants_usage)
                self.events += block.count(b"\n\n")
                if block:
                    yield block
                if done_at >= 0:
                    return
        except UpstreamError as exc:  # the engine broke off or went quiet mid-stream
            self.replica.failed(failure_reason(exc, stream=True), self.group.replicas)
            raise

    def _take_usage(self, block: bytes, keep: bool) -> bytes:
        """Read the usage event; drop it unless the client asked for it (an endpoint
        without a usage option always keeps its events)."""
        assert self._usage_mark is not None
        keep = keep or not ENDPOINTS[self.ctx.endpoint].usage_option
        events = block.split(b"\n\n")
        for index, event in enumerate(events):
            if self._usage_mark in event:
                self.usage = _usage_of(_event_data(event))
                if not keep:
                    del events[index]
                break
        return b"\n\n".join(events)

    def record_error(self, error: GatewayError) -> None:
        self.group.metrics.errors(error.code or error.type).inc()

    async def abort(self) -> None:
        """Stop the engine request explicitly, for engines where closing the connection
        is not enough (SGLang); ``finish`` closes it afterwards."""
        await self.replica.engine.abort(self.upstream_id)

    def finish(self, outcome: Outcome, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        self.upstream.close()
        self.replica.release()
        if self.lease is not None:
            self.lease.release()
        prompt = self.usage.get("prompt_tokens") if self.usage else None
        self.group.policy.on_done(self.ctx, self.replica.id, outcome,
                                  prompt if isinstance(prompt, int) else None)
        m = self.group.metrics
        m.requests(self.ctx.endpoint, status).inc()
        now = time.perf_counter()
        m.request_duration.observe(now - self.started)
        if self.first_chunk_at is not None:
            m.time_to_first_token.observe(self.first_chunk_at - self.started)
            if self.events > 1:
                m.inter_token_latency.observe((now - self.first_chunk_at) / (self.events - 1))
        if self.usage:
            completion = self.usage.get("completion_tokens")
            if isinstance(prompt, int):
                m.prompt_tokens.inc(prompt)
            if isinstance(completion, int):
                m.completion_tokens.inc(completion)
                m.request_tokens.observe(completion)
        if outcome == "cancelled":
            m.client_disconnects.inc()
        self._calibrate()

    def _calibrate(self) -> None:
        """Compare the policy's expected prefix-cache share with what the engine reports
        (``usage.prompt_tokens_details.cached_tokens``, e.g. vLLM with
        --enable-prompt-tokens-details)."""
        predicted = self.group.policy.take_prediction(self.ctx)
        if predicted is None or not self.usage:
            return
        details = self.usage.get("prompt_tokens_details")
        prompt = self.usage.get("prompt_tokens")
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        if isinstance(cached, int) and isinstance(prompt, int) and prompt > 0:
            self.group.metrics.prefix_prediction_error.observe(predicted - cached / prompt)


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
        with self.tracing.span("llmgw.route") as span:
            # Traced, the decision is explained for its scores; only ``explain`` shows it.
            traced = span is not None and span.is_recording()
            decision = group.policy.explain(ctx, views) if explain or traced else None
            ranked = [group.replica(v.id) for v in (
                decision.ranked if decision is not None else group.policy.rank(ctx, views))]
            if traced and decision is not None:
                assert span is not None
                span.set_attributes({"llmgw.route.policy": group.policy_name,
                                     "llmgw.route.ranked": [r.id for r in ranked],
                                     "llmgw.route.decision": orjson.dumps(
                                         decision.as_dict()).decode()})
        decision = decision if explain else None
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
            replica.metrics.routed.inc()
            for shadow in group.shadows:
                shadow.observe(ctx, views, replica.id)
            exchange = Exchange(ctx, group, replica, upstream, started, deadline, upstream_id)
            exchange.decision = decision
            exchange.lease = lease
            return exchange
        assert error is not None
        raise error

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
        metrics.requests(endpoint, status).inc()
        metrics.request_duration.observe(self._clock() - started)
        if status == 499:  # nginx's "client closed request": the client left
            metrics.client_disconnects.inc()


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


async def _send(replica: Replica, path: str, body: bytes, deadline: float | None,
                first_byte_s: float | None) -> UpstreamResponse:
    """``first_byte_s``: a stream's limit on waiting for the engine's headers."""
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


def _done_offset(block: bytes) -> int:
    """Where ``data: [DONE]`` starts in a block of events, or -1."""
    if block.startswith(_DONE):
        return 0
    at = block.find(b"\n\n" + _DONE)
    return at + 2 if at >= 0 else -1


def _event_data(event: bytes) -> bytes:
    """The ``data:`` field of one SSE event (Responses events have an ``event:`` line
    first)."""
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:]
    return b""


def _usage_of(payload: bytes) -> Mapping[str, Any] | None:
    try:
        return normalized_usage(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return None
