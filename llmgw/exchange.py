"""``Exchange``: one request in flight on one replica, from the engine's answer to the
client's last byte: relaying the engine's events (usage taken out, ``[DONE]`` left to the
caller, a silent stream cut), and accounting exactly once however it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from llmgw.engines.base import UpstreamResponse
from llmgw.errors import (
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
)
from llmgw.lora.residency import Lease
from llmgw.model_group import ModelGroup
from llmgw.pool import Replica
from llmgw.protocol import ENDPOINTS, normalized_usage
from llmgw.resilience.retry import failure_reason
from llmgw.resilience.stall import until_idle
from llmgw.routing.base import Decision
from llmgw.types import Outcome, RequestContext

DONE_EVENT = b"data: [DONE]\n\n"
_DONE = b"data: [DONE]"


class Exchange:
    """One request in flight on one replica. It holds the replica's in-flight count from
    ``Dispatcher.open`` on; ``finish`` releases everything exactly once, whatever path the
    request takes out (done, error, timeout, client gone)."""

    __slots__ = ("ctx", "group", "replica", "upstream", "upstream_id", "started", "deadline",
                 "first_chunk_at", "usage", "decision", "lease", "pd_path", "prefill_replica",
                 "events", "answer", "_usage_mark", "_finished")

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
        # A non-streaming answer's body, read by the dispatcher within its attempt (a
        # disaggregated model's decode leg is read here, by ``read_all``).
        self.answer: bytes | None = None
        # The stream event that carries the usage (chat's usage chunk, asked for on every
        # stream so token metrics are exact; Responses' response.completed).
        self._usage_mark = ENDPOINTS[ctx.endpoint].usage_mark
        self._finished = False

    async def read_all(self) -> bytes:
        """The engine's whole (non-streaming) answer."""
        if self.answer is not None:
            self.usage = _usage_of(self.answer)
            return self.answer
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
        m.count_request(self.ctx.endpoint, status)
        now = time.perf_counter()
        m.observe_duration(now - self.started)
        if self.first_chunk_at is not None:
            m.observe_ttft(self.first_chunk_at - self.started)
            if self.events > 1:
                m.observe_itl((now - self.first_chunk_at) / (self.events - 1))
        if self.usage:
            completion = self.usage.get("completion_tokens")
            if isinstance(prompt, int):
                m.add_prompt_tokens(prompt)
            if isinstance(completion, int):
                m.add_completion_tokens(completion)
                m.observe_request_tokens(completion)
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
            observed = cached / prompt
            self.group.metrics.prefix_prediction_error.observe(predicted - observed)
            factor = self.group.policy.on_cached(self.ctx, self.replica.id, predicted, observed)
            if factor is not None:
                self.replica.metrics.affinity_factor.set(factor)


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
