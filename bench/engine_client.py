"""The engine leg alone: CPU per request of llmgw's HTTP/1.1 client (llmgw.engines.http1)
against aiohttp, the client it replaced, both sending the gateway's requests to the
instant engine from one process, alternating in rounds.

    .venv/bin/python bench/engine_client.py                  # 5 rounds x 5000 requests
    .venv/bin/python bench/engine_client.py --stream         # 16-token streams

Prints a markdown table: requests per second and this process's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
from instant_engine import loop_factory
from processes import wait_ready
from targets import Layout, start_engine

from llmgw.engines.http1.pool import HTTPClient

Send = Callable[[bytes], Awaitable[bytes]]
PATH = "/v1/chat/completions"


def body(stream: bool) -> bytes:
    return orjson.dumps({"model": "fake", "max_tokens": 16, "stream": stream,
                         "messages": [{"role": "user", "content": "hello there"}]})


def http1_sender(client: HTTPClient, url: str) -> Send:
    pool = client.pool(url)

    async def send(payload: bytes) -> bytes:
        response = await pool.post(PATH, payload)
        return await response.read()

    return send


def aiohttp_sender(session: aiohttp.ClientSession, url: str) -> Send:
    """As llmgw's OpenAIHTTPEngine used it (llmgw/build.py's session settings)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    headers = {"content-type": "application/json"}

    async def send(payload: bytes) -> bytes:
        async with session.post(url + PATH, data=payload, headers=headers,
                                timeout=timeout) as response:
            return await response.read()

    return send


async def measure(send: Send, payload: bytes, requests: int, concurrency: int
                  ) -> tuple[float, float]:
    """Requests per second and CPU ms per request of this process."""
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await send(payload)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return requests / wall, cpu * 1000 / requests


async def run(args: argparse.Namespace) -> None:
    payload = body(args.stream)
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-") as tmp:
        layout = Layout.pinned()
        engine = start_engine(Path(tmp), 0.0, layout.engine)
        try:
            await wait_ready(engine, "/health", 30)
            client = HTTPClient()
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                    auto_decompress=False) as session:
                senders = {"llmgw.engines.http1": http1_sender(client, engine.url),
                           "aiohttp": aiohttp_sender(session, engine.url)}
                results: dict[str, list[tuple[float, float]]] = {n: [] for n in senders}
                for send in senders.values():  # warm up: connections, caches
                    await measure(send, payload, 500, args.concurrency)
                for _ in range(args.rounds):
                    for name, send in senders.items():
                        results[name].append(
                            await measure(send, payload, args.requests, args.concurrency))
            client.close()
        finally:
            engine.stop()
    kind = "16-token streams" if args.stream else "non-streaming, 16 tokens"
    print(f"\n{kind}, concurrency {args.concurrency}, {args.rounds} rounds x "
          f"{args.requests} requests (median of rounds)\n")
    print("| client | req/s | client CPU ms/req |")
    print("|---|---|---|")
    for name, rows in results.items():
        rates = sorted(r for r, _ in rows)
        cpus = sorted(c for _, c in rows)
        print(f"| {name} | {rates[len(rates) // 2]:.0f} | {cpus[len(cpus) // 2]:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=loop_factory()) as runner, \
            contextlib.suppress(KeyboardInterrupt):
        runner.run(run(args))


if __name__ == "__main__":
    main()
