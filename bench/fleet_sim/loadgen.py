"""Replaying a workload: a closed loop at fixed concurrency, or an open loop at given
arrival times, over sessions.

``concurrency`` workers share a pool of ``active`` open sessions. A worker takes a ready
session (one whose previous reply has arrived) chosen by a seeded rng, sends its next
step as a stream, appends the reply, and puts it back; a finished session makes room for
the next one. With more open sessions than workers, a session's turns are separated by
other sessions' turns, as think time separates them in real traffic, so the caches see
the interleaving that evicts. Bounded by the workload's count and by ``time_limit_s``.
With arrival times (``arrivals.py``) there are no workers: each arrival sends the next
turn of a ready session, whatever is still in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.fleet_sim.tokens import render_chat
from bench.fleet_sim.workloads import Message, Session, Workload

REQUEST_TIMEOUT_S = 60.0


@dataclass
class Result:
    """One request as the client saw it; times in ms from sending it."""

    session: str
    ok: bool = False
    error: str = ""
    ttft_ms: float = 0.0
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    replica: str = ""  # the engine's system_fingerprint
    sim: dict[str, Any] = field(default_factory=dict)  # the engine's simulated timings
    content: str = ""
    # The rendered prompt and the order it was sent in (from 0): the trace the hit-rate
    # bound (bound.py) is computed over.
    prompt: str = ""
    sent: int = -1
    adapter: str | None = None  # the LoRA adapter it ran under (its KV blocks' salt)


def _absorb(result: Result, event: dict[str, Any], started: float) -> None:
    """Fold one SSE chunk into ``result``."""
    result.replica = event.get("system_fingerprint") or result.replica
    for choice in event.get("choices") or []:
        piece = (choice.get("delta") or {}).get("content")
        if piece:
            if not result.content:
                result.ttft_ms = (time.perf_counter() - started) * 1000
            result.content += piece
    usage = event.get("usage")
    if usage:
        result.prompt_tokens = usage.get("prompt_tokens", 0)
        result.completion_tokens = usage.get("completion_tokens", 0)
        details = usage.get("prompt_tokens_details") or {}
        result.cached_tokens = details.get("cached_tokens") or 0
    if isinstance(event.get("sim"), dict):
        result.sim = event["sim"]


async def send(http: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str], result: Result) -> None:
    """POST one streamed chat request and read it to ``data: [DONE]``."""
    started = time.perf_counter()
    done = False
    try:
        async with http.post(url, data=body, headers=headers) as response:
            if response.status != 200:
                result.error = f"status {response.status}: {(await response.text())[:200]}"
                return
            pending = b""
            async for data in response.content.iter_any():
                pending += data
                *events, pending = pending.split(b"\n\n")
                for raw in events:
                    payload = raw.strip().removeprefix(b"data: ")
                    if payload == b"[DONE]":
                        done = True
                    elif payload.startswith(b"{"):
                        _absorb(result, orjson.loads(payload), started)
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.error = repr(exc)[:200]
        return
    result.latency_ms = (time.perf_counter() - started) * 1000
    result.ok = done and bool(result.content)
    if not result.ok:
        result.error = result.error or "stream ended without [DONE] or content"


def round_robin(urls: Sequence[str]) -> Callable[[], str]:
    """Each call returns the next URL in turn, as an L4/L7 round-robin balancer in front of
    several gateways does. It turns per request, not per session, so a session's turns
    may land on different gateways."""
    turns = itertools.cycle(urls)
    return lambda: next(turns)


class Replay:
    """One replay of a workload against one target. ``pick_url`` chooses the URL of each
    request (a fixed router URL, or a random engine for the direct row)."""

    def __init__(self, workload: Workload, pick_url: Callable[[], str], model: str,
                 concurrency: int, active: int, seed: int) -> None:
        self.pick_url, self.model, self.concurrency = pick_url, model, concurrency
        self.rng = random.Random(seed)
        self.queue = list(workload.sessions)
        self.queue.reverse()  # pop() takes them in workload order
        self.active = active
        self.ready: list[tuple[Session, list[Message], int]] = []
        self.open = 0
        self.results: list[Result] = []
        self.changed = asyncio.Condition()
        self._sent = itertools.count()

    def _fill(self) -> None:
        while self.open < self.active and self.queue:
            session = self.queue.pop()
            self.ready.append((session, list(session.opening), 0))
            self.open += 1

    async def _take(self) -> tuple[Session, list[Message], int] | None:
        async with self.changed:
            while True:
                self._fill()
                if self.ready:
                    return self.ready.pop(self.rng.randrange(len(self.ready)))
                if self.open == 0:
                    return None
                await self.changed.wait()

    async def _give_back(self, item: tuple[Session, list[Message], int] | None) -> None:
        async with self.changed:
            if item is None:
                self.open -= 1
            else:
                self.ready.append(item)
            self.changed.notify_all()

    async def _worker(self, http: aiohttp.ClientSession) -> None:
        while (item := await self._take()) is not None:
            await self._step(http, item)

    async def _step(self, http: aiohttp.ClientSession,
                    item: tuple[Session, list[Message], int]) -> None:
        """Send a session's next step, record it and give the session back."""
        session, history, index = item
        step = session.steps[index]
        history = [*history, *step.messages]
        body: dict[str, Any] = {"model": session.adapter or self.model, "messages": history,
                                "stream": True,
                                "stream_options": {"include_usage": True},
                                "max_tokens": step.max_tokens}
        headers = {"content-type": "application/json"}
        if session.sticky:
            body["user"] = session.id
            headers["x-session-id"] = session.id
        result = Result(session.id, prompt=render_chat(history), sent=next(self._sent),
                        adapter=session.adapter)
        await send(http, self.pick_url(), orjson.dumps(body), headers, result)
        self.results.append(result)
        history.append({"role": "assistant", "content": result.content})
        last = index + 1 == len(session.steps)
        # A failed step ends its session: its history would differ between targets.
        await self._give_back(None if last or not result.ok else (session, history, index + 1))

    async def _arrivals(self, http: aiohttp.ClientSession, offsets: Sequence[float]) -> None:
        """Open loop: at each offset, send the next turn of a ready session without waiting
        for earlier answers. An arrival that finds no session ready waits for one (a user
        does not send turn 3 before turn 2's answer), so it is late, never dropped."""
        started = time.perf_counter()
        sends: set[asyncio.Task[None]] = set()
        try:
            for offset in offsets:
                await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
                if (item := await self._take()) is None:
                    break
                task = asyncio.create_task(self._step(http, item))
                sends.add(task)
                task.add_done_callback(sends.discard)
            await asyncio.gather(*sends)
        finally:
            for task in sends:
                task.cancel()
            await asyncio.gather(*sends, return_exceptions=True)

    async def run(self, time_limit_s: float, arrivals: Sequence[float] | None = None) -> float:
        """Run to the end or the time limit; returns the wall time in seconds. With
        ``arrivals`` (offsets in seconds, ``arrivals.py``) the replay is an open loop at
        those times; without, ``concurrency`` workers each send as soon as they are done."""
        connector = aiohttp.TCPConnector(limit=0 if arrivals is not None else self.concurrency * 2,
                                         force_close=False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        started = time.perf_counter()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            workers = ([asyncio.create_task(self._arrivals(http, arrivals))]
                       if arrivals is not None else
                       [asyncio.create_task(self._worker(http)) for _ in range(self.concurrency)])
            done, pending = await asyncio.wait(workers, timeout=time_limit_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()  # a worker's bug surfaces here, not as missing requests
        return time.perf_counter() - started
