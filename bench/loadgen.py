"""Closed-loop load: ``concurrency`` workers send a bounded number of requests.

Runs in the benchmark's own process on one aiohttp session per (target, round), so every
target sees the same client, the same fresh keep-alive connections and the same bodies.
Every loop is bounded in count and in time; a request that fails or times out is counted
as an error, never retried.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

_DONE_TAIL = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class Workload:
    """What one request asks for. ``max_tokens`` is exact with the instant engine."""

    stream: bool
    max_tokens: int
    concurrency: int
    model: str = "fake"

    def body(self) -> bytes:
        return orjson.dumps({
            "model": self.model, "max_tokens": self.max_tokens, "stream": self.stream,
            "messages": [{"role": "user", "content": "Say something about gateways."}],
        })


@dataclass(slots=True)
class RoundResult:
    """One measured phase against one target. Times in seconds."""

    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)  # streams only
    errors: int = 0
    elapsed: float = 0.0
    error_sample: str = ""
    tally: Counter[str] = field(default_factory=Counter)  # answers by a header's value

    @property
    def ok(self) -> int:
        return len(self.latencies)


async def _one(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool,
               result: RoundResult, tally: str | None) -> None:
    started = time.perf_counter()
    first: float | None = None
    async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
        if stream:
            tail = b""
            async for chunk in r.content.iter_any():
                if first is None:
                    first = time.perf_counter()
                tail = tail[-16:] + chunk[-16:]
            good = r.status == 200 and tail.endswith(_DONE_TAIL)
        else:
            data = await r.read()
            good = r.status == 200 and b'"finish_reason"' in data
    if not good:
        raise ValueError(f"bad answer: status {r.status}")
    if tally is not None:
        result.tally[r.headers.get(tally, "")] += 1
    result.latencies.append(time.perf_counter() - started)
    if first is not None:
        result.first_bytes.append(first - started)


async def run_round(session: aiohttp.ClientSession, url: str, workload: Workload,
                    requests: int, time_limit_s: float, tally: str | None = None) -> RoundResult:
    """Send ``requests`` requests, ``workload.concurrency`` at a time. Workers stop taking
    new requests once ``time_limit_s`` has passed; unsent requests are not counted.
    ``tally``: a response header whose values are counted in ``result.tally``."""
    result, body = RoundResult(), workload.body()
    remaining = [requests]
    started = time.perf_counter()
    stop_at = started + time_limit_s

    async def worker() -> None:
        while remaining[0] > 0 and time.perf_counter() < stop_at:
            remaining[0] -= 1
            try:
                await _one(session, url, body, workload.stream, result, tally)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                result.errors += 1
                result.error_sample = result.error_sample or repr(exc)[:200]

    await asyncio.gather(*(worker() for _ in range(min(workload.concurrency, requests))))
    result.elapsed = time.perf_counter() - started
    return result


def new_session(workload: Workload, request_timeout_s: float) -> aiohttp.ClientSession:
    """A session whose pool holds exactly one connection per worker."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=workload.concurrency, force_close=False),
        timeout=aiohttp.ClientTimeout(total=request_timeout_s), auto_decompress=False,
    )
