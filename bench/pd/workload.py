"""The mixed workload: short chats in a closed loop, long prompts arriving on a clock.

Every request is unique (seeded words), so no prefix cache serves any of it: each long
prompt costs a full prefill wherever it lands, which is what disaggregation moves off
the replica that streams the short chats.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class Results:
    ttft_s: list[float] = field(default_factory=list)      # short chats, to first token
    gaps_s: list[float] = field(default_factory=list)      # short chats, between tokens
    itl_s: list[float] = field(default_factory=list)       # short chats, mean gap each
    long_s: list[float] = field(default_factory=list)      # long prompts, whole request
    errors: dict[str, int] = field(default_factory=dict)   # error code -> count

    def failed(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


def short_chat(rng: random.Random, max_tokens: int) -> dict[str, Any]:
    words = " ".join(f"w{rng.randrange(10**6)}" for _ in range(12))
    return {"model": "demo", "messages": [{"role": "user", "content": f"hi, {words}"}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}


def long_prompt(rng: random.Random, words: int) -> dict[str, Any]:
    # ~4.5 demo-model tokens per word: 300 words is ~1400 tokens of the 2048 context.
    text = " ".join(f"doc{rng.randrange(10**6)}" for _ in range(words))
    return {"model": "demo", "messages": [{"role": "user", "content": text}],
            "max_tokens": 8, "temperature": 0}


async def one_short(client: httpx.AsyncClient, body: dict[str, Any], out: Results) -> None:
    started = time.perf_counter()
    stamps: list[float] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            out.failed(_code(await reply.aread(), reply.status_code))
            return
        async for line in reply.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("error"):
                out.failed(str(event["error"].get("code") or "stream_error"))
                return
            choices = event.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                stamps.append(time.perf_counter())
    if not stamps:
        out.failed("no_tokens")
        return
    out.ttft_s.append(stamps[0] - started)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    out.gaps_s += gaps
    if gaps:
        out.itl_s.append(sum(gaps) / len(gaps))


async def one_long(client: httpx.AsyncClient, body: dict[str, Any], out: Results) -> None:
    started = time.perf_counter()
    reply = await client.post("/v1/chat/completions", json=body)
    if reply.status_code == 200:
        out.long_s.append(time.perf_counter() - started)
    else:
        out.failed(_code(reply.content, reply.status_code))


def _code(body: bytes, status: int) -> str:
    try:
        return str(orjson.loads(body)["error"]["code"] or status)
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return str(status)


async def drive(url: str, *, seconds: float, short_clients: int, short_tokens: int,
                long_every_s: float, long_words: int, seed: int) -> Results:
    out = Results()
    rng = random.Random(seed)
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def chatter() -> None:
            while time.perf_counter() < deadline:
                failures = sum(out.errors.values())
                await one_short(client, short_chat(rng, short_tokens), out)
                if sum(out.errors.values()) > failures:
                    await asyncio.sleep(0.1)  # a client backs off rather than spin on errors

        async def arrivals() -> None:
            longs = []
            while time.perf_counter() < deadline:
                longs.append(asyncio.create_task(one_long(client, long_prompt(rng, long_words),
                                                          out)))
                await asyncio.sleep(long_every_s)  # an open-loop arrival clock
            await asyncio.gather(*longs)

        await asyncio.gather(arrivals(), *(chatter() for _ in range(short_clients)))
    return out
