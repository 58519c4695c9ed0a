"""The LoRA workload: which adapter each request names (Zipf popularity), and its replay
against one gateway with the client-side latency of every request.

Popularity is Zipf over the adapters' ranks: adapter ``demo-lora-k`` (rank k + 1) is
drawn with probability proportional to ``1 / (k + 1) ** s``. With 32 adapters and
s = 1.1 the most popular one gets 28% of requests, the top 4 56%, the top 8 71%; the 24
others share the remaining 29% (what no 8 slots in total can hold).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx

ADAPTER = "demo-lora-{}"
TOPICS = ("routers", "caches", "queues", "adapters", "replicas", "tokens", "latency", "GPUs")


def zipf_weights(count: int, s: float) -> list[float]:
    """Probability of each rank 0..count-1; sums to 1."""
    raw = [1.0 / (k + 1) ** s for k in range(count)]
    total = sum(raw)
    return [w / total for w in raw]


@dataclass(frozen=True, slots=True)
class Request:
    adapter: str
    prompt: str


def build(requests: int, adapters: int, s: float, seed: int) -> list[Request]:
    """``requests`` short chat prompts, each for an adapter drawn from Zipf(``s``)."""
    rng = random.Random(seed)
    ranks = rng.choices(range(adapters), weights=zipf_weights(adapters, s), k=requests)
    return [Request(ADAPTER.format(k), f"Write one line about {rng.choice(TOPICS)} "
                    f"(note {rng.randrange(10**6)}).") for k in ranks]


@dataclass
class Outcome:
    """One request as the client saw it: seconds from send to the full answer, the
    replica the gateway named (x-llmgw-replica), or the error."""

    adapter: str
    latency_s: float
    replica: str | None = None
    error: str | None = None


async def replay(url: str, requests: list[Request], concurrency: int, max_tokens: int,
                 timeout_s: float) -> tuple[list[Outcome], float]:
    """Send every request once through the gateway at ``url``, ``concurrency`` at a time
    (a closed loop: each worker sends its next request when the last one answered).
    Returns the outcomes in workload order and the wall time of the whole replay."""
    outcomes: list[Outcome | None] = [None] * len(requests)
    next_index = iter(range(len(requests)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:

        async def worker() -> None:
            for i in next_index:  # a shared iterator: each index goes to one worker
                outcomes[i] = await _send(http, requests[i], max_tokens)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return [o for o in outcomes if o is not None], wall


async def _send(http: httpx.AsyncClient, request: Request, max_tokens: int) -> Outcome:
    body = {"model": request.adapter, "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": max_tokens, "temperature": 0}
    started = time.perf_counter()
    try:
        response = await http.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        return Outcome(request.adapter, time.perf_counter() - started,
                       error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - started
    if response.status_code != 200:
        return Outcome(request.adapter, latency,
                       error=f"{response.status_code}: {response.text[:200]}")
    return Outcome(request.adapter, latency, response.headers.get("x-llmgw-replica"))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fewest_loads(adapters: list[str], slots: int) -> int:
    """Loads that Belady's offline-optimal eviction needs to serve ``adapters`` in order
    from ``slots`` slots (evict the adapter needed again furthest in the future). With
    every replica's slots pooled, no routing and no eviction policy can do with fewer."""
    next_use = [len(adapters)] * len(adapters)
    last: dict[str, int] = {}
    for i in range(len(adapters) - 1, -1, -1):
        next_use[i] = last.get(adapters[i], len(adapters))
        last[adapters[i]] = i
    held: dict[str, int] = {}  # adapter -> when it is needed next
    loads = 0
    for i, name in enumerate(adapters):
        if name not in held:
            loads += 1
            if len(held) >= slots:
                del held[max(held, key=held.__getitem__)]
        held[name] = next_use[i]
    return loads
