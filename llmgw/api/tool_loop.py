"""The server-side tool loop on /v1/chat/completions (opt-in per request, see
llmgw/tools/loop.py): model -> hosted tool calls -> results -> model, until the model
answers without hosted calls, calls a tool of the client's, or ``max_tool_rounds`` is
reached (then one more round with ``tool_choice: "none"``).

All rounds go to one engine replica (the first round's: its prefix cache holds the
conversation). The client gets one assistant message with usage summed over the rounds.
Streamed, that is one message too: content deltas of every round as they arrive, hosted
calls and intermediate finish reasons never shown, one finish reason at the end. Calls
the gateway runs whose tool raised (or whose arguments its schema refused) go back to the
model as the tool's result, so it can correct itself; anything else that fails (the
engine, a tool that is unavailable, times out or loses its worker) ends the request with
an error: its status before the stream started, an error event and ``[DONE]`` after.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.types import Send

from llmgw.admission import FairQueue
from llmgw.api.disconnect import DisconnectWatch
from llmgw.api.sse import SSE_HEADERS, end_in_band
from llmgw.context import CallContext
from llmgw.dispatcher import Dispatcher
from llmgw.errors import GatewayError, InvalidRequest, ToolError, UpstreamTimeout
from llmgw.exchange import Exchange
from llmgw.lora.catalog import Adapter
from llmgw.model_group import ModelGroup
from llmgw.tools.loop import StreamTurn, Turn, add_usage, round_request, turn_of
from llmgw.tools.schema import ToolSpec
from llmgw.tools.toolset import ToolSet
from llmgw.types import Outcome, RequestContext

Headers = list[tuple[bytes, bytes]]


class ToolLoop:
    """One request's loop. ``exchange``: the round in flight (the route finishes or
    aborts it, whatever happens); earlier rounds are finished here."""

    def __init__(self, dispatcher: Dispatcher, group: ModelGroup, ctx: RequestContext,
                 adapter: Adapter | None, tools: ToolSet, offered: list[ToolSpec],
                 parsed: dict[str, Any], max_rounds: int, upstream_id: str,
                 caller: CallContext) -> None:
        self._dispatcher, self._group, self._ctx, self._adapter = dispatcher, group, ctx, \
            adapter
        self._tools, self._hosted = tools, {s.name for s in offered}
        self._request = round_request(parsed, offered)
        self._messages: list[Any] = list(parsed.get("messages") or [])
        self._max_rounds, self._upstream_id = max_rounds, upstream_id
        self._wants_usage = bool((parsed.get("stream_options") or {}).get("include_usage"))
        self._caller = caller  # the request's depth and key, for the tools' own calls
        self.usage: dict[str, int] = {}
        self.exchange: Exchange | None = None
        self.rounds = 0
        # The model's admission slot (admission:), held while a round runs and let go
        # while tools run: a tool that calls the model (llmgw.context) must find a slot.
        self.slot: HeldSlot | None = None

    async def _open(self) -> Exchange:
        """The next round on the first round's replica (failover only while unreachable)."""
        if self.exchange is not None:  # the previous round is done
            self.exchange.usage = None  # counted once, in the summed usage at the end
            self.exchange.finish("ok", 200)
        body: dict[str, Any] = {**self._request, "messages": self._messages,
                                "stream": self._ctx.stream}
        if self.rounds >= self._max_rounds:  # the cap: this round must answer in words
            body["tool_choice"] = "none"
        if self._ctx.stream:
            body["stream_options"] = {"include_usage": True}
        pin = self.exchange.replica.id if self.exchange is not None else None
        round_id = f"{self._upstream_id}-{self.rounds}"
        encoded = self._dispatcher.upstream_body(self._group, orjson.dumps(body), body,
                                                 self._ctx.stream, True, round_id,
                                                 self._adapter)
        self.exchange = await self._dispatcher.open(self._ctx, self._group, encoded, round_id,
                                                    adapter=self._adapter, pin=pin)
        self.rounds += 1
        return self.exchange

    async def _run_calls(self, turn: Turn) -> None:
        """The round's hosted calls, at once; their results join the conversation."""
        if self.slot is not None:
            self.slot.release()
        with self._dispatcher.tracing.span("llmgw.tool.round") as span:
            if span is not None and span.is_recording():
                span.set_attributes({"llmgw.tool.round": self.rounds, "llmgw.tool.calls": [
                    str((c.get("function") or {}).get("name")) for c in turn.tool_calls]})
            results = await asyncio.gather(*(self._result(c) for c in turn.tool_calls))
        if self.slot is not None:
            await self.slot.acquire()
        self._messages.append(turn.assistant_message())
        self._messages += [{"role": "tool", "tool_call_id": call.get("id"), "content": text}
                           for call, text in zip(turn.tool_calls, results, strict=True)]

    async def _result(self, call: dict[str, Any]) -> str:
        function = call.get("function") or {}
        try:
            result = await self._tools.call(function.get("name", ""),
                                            function.get("arguments") or "{}",
                                            depth=self._caller.depth,
                                            authorization=self._caller.authorization)
        except (ToolError, InvalidRequest) as exc:  # the model reads it and may retry
            return f"error: {exc.message}"
        return result.content

    def _more(self, turn: Turn) -> bool:
        return turn.hosted_only(self._hosted) and self.rounds <= self._max_rounds

    # --- not streamed ---------------------------------------------------------------

    async def answer_json(self, send: Send, headers: Headers, watch: DisconnectWatch) -> int:
        """Raises GatewayError before anything was sent."""
        while True:
            exchange = await self._open()
            body = await exchange.read_all()
            if exchange.upstream.status != 200:  # the engine's own error, passed through
                watch.done = True
                return await _send_json(send, exchange.upstream.status, body, headers)
            completion = orjson.loads(body)
            add_usage(self.usage, completion.get("usage"))
            turn = turn_of(completion)
            if not self._more(turn):
                break
            await self._run_calls(turn)
        completion["usage"] = self.usage
        exchange.usage = self.usage
        self._tools.metrics.loop_rounds.labels(self._group.name).observe(self.rounds)
        watch.done = True
        return await _send_json(send, 200, orjson.dumps(completion),
                                [*headers, _replica_header(exchange)])

    # --- streamed -------------------------------------------------------------------

    async def answer_stream(self, send: Send, headers: Headers, watch: DisconnectWatch,
                            request_id: str) -> Outcome:
        """The first round is opened before the status is sent (its errors are plain
        HTTP errors); from then on every failure ends the stream in-band."""
        first = await self._open()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*SSE_HEADERS, *headers, _replica_header(first)]})
        stream = _Stream(send, f"chatcmpl-{request_id}", self._group.name)
        return await end_in_band(self._stream_rounds(first, stream), send, watch,
                                 self._record, request_id)

    def _record(self, error: GatewayError) -> None:
        if self.exchange is not None:
            self.exchange.record_error(error)

    async def _stream_rounds(self, exchange: Exchange, stream: _Stream) -> None:
        while True:
            turn = await self._stream_round(exchange, stream)
            if not self._more(turn):
                break
            await self._run_calls(turn)
            exchange = await self._open()
        if turn.tool_calls:  # the client's own calls, untouched, in one delta
            await stream.delta({"tool_calls": [{"index": i, **c}
                                               for i, c in enumerate(turn.tool_calls)]})
        await stream.finish(turn.finish_reason or "stop")
        assert self.exchange is not None
        self.exchange.usage = self.usage
        self._tools.metrics.loop_rounds.labels(self._group.name).observe(self.rounds)
        if self._wants_usage:
            await stream.usage(self.usage)

    async def _stream_round(self, exchange: Exchange, stream: _Stream) -> Turn:
        """One round, within the request's deadline (a timeout scope around the whole
        relay, never across a yield of it)."""
        if exchange.deadline is None:
            return await self._relay_round(exchange, stream)
        try:
            async with asyncio.timeout_at(exchange.deadline):
                return await self._relay_round(exchange, stream)
        except TimeoutError:
            raise UpstreamTimeout("the request exceeded its time limit mid-stream") from None

    async def _relay_round(self, exchange: Exchange, stream: _Stream) -> Turn:
        if exchange.upstream.status != 200:
            raise GatewayError(f"the engine answered {exchange.upstream.status} in round "
                               f"{self.rounds} of the tool loop")
        round_ = StreamTurn()
        async for block in exchange.relay(True):
            for event in block.split(b"\n\n"):
                if not event.startswith(b"data: "):
                    continue
                chunk = orjson.loads(event[6:])
                if "error" in chunk:
                    raise GatewayError(str(chunk["error"].get("message", "engine error")))
                if chunk.get("usage"):
                    add_usage(self.usage, chunk["usage"])
                text = round_.add(chunk)
                if text:
                    await stream.delta({"content": text})
        return round_.done()


class HeldSlot:
    """One request's slot in its model's admission queue; ``release`` is idempotent."""

    def __init__(self, queue: FairQueue, tenant: str, priority: str, weight: float) -> None:
        self._queue, self._tenant, self._priority, self._weight = queue, tenant, priority, \
            weight
        self.held = False

    async def acquire(self) -> None:
        """Raises Saturated when shed (then nothing is held)."""
        await self._queue.acquire(self._tenant, self._priority, self._weight)
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._queue.release(self._tenant)


class _Stream:
    """The client's one message: chunks under one id, the role in the first."""

    def __init__(self, send: Send, chunk_id: str, model: str) -> None:
        self._send, self._id, self._model = send, chunk_id, model
        self._created, self._started = int(time.time()), False

    async def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> None:
        data = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model, "choices": choices, **extra}
        await self._send({"type": "http.response.body",
                          "body": b"data: " + orjson.dumps(data) + b"\n\n", "more_body": True})

    async def delta(self, delta: dict[str, Any]) -> None:
        if not self._started:
            self._started = True
            delta = {"role": "assistant", **delta}
        await self._chunk([{"index": 0, "delta": delta, "finish_reason": None}])

    async def finish(self, reason: str) -> None:
        if not self._started:
            await self.delta({"content": ""})
        await self._chunk([{"index": 0, "delta": {}, "finish_reason": reason}])

    async def usage(self, usage: dict[str, int]) -> None:
        await self._chunk([], usage=usage)


def _replica_header(exchange: Exchange) -> tuple[bytes, bytes]:
    """Where the rounds ran (all on one replica unless it became unreachable)."""
    return b"x-llmgw-replica", exchange.replica.id.encode()


async def _send_json(send: Send, status: int, body: bytes, headers: Headers) -> int:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
    return status
