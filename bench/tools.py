"""Tools through the gateway: the cost per call, and what dynamic batching buys.

    python -m bench.tools [--calls 300] [--seconds 5] [--concurrency 64]
                          [--out bench/out/tools.json]

One `llmgw up` (a fake engine, and these tools):

- ``weather`` (llmgw.tools.examples:Weather) in a worker process and ``weather_local``,
  the same class inside the gateway (``replicas: 0``). Each is called ``--calls`` times
  one after another over HTTP (``POST /v1/tools/{name}``, keep-alive); the same method
  called in this process is the baseline. The difference is what serving adds per call.
- ``vec_score`` (bench/tool_classes.py:Vectorized, a batched method whose batch costs
  5 ms plus 0.1 ms per item) in one worker with batching on (``max_batch_size`` 32, 2 ms
  wait) and ``vec_off_score``, the same with ``max_batch_size: 1``. A closed loop of
  ``--concurrency`` clients calls each for ``--seconds``: calls per second and latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.processes import Proc, free_ports, spawn, wait_ready
from llmgw.tools.examples import Weather


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def gateway_config(port: int) -> dict[str, Any]:
    vectorized = {"import_path": "bench.tool_classes:Vectorized", "replicas": 1,
                  "max_ongoing_requests": 256}
    return {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning"},
        "models": [{"name": "fake", "engine": "fake", "model": "fake", "replicas": 1}],
        "tools": [
            {"name": "weather", "import_path": "llmgw.tools.examples:Weather", "replicas": 1},
            {"name": "weather_local", "import_path": "llmgw.tools.examples:Weather",
             "replicas": 0},
            {"name": "vec", **vectorized},
            {"name": "vec_off", **vectorized,
             "batch": {"score": {"max_batch_size": 1, "batch_wait_timeout_s": 0}}},
        ],
    }


def in_process_us(calls: int) -> float:
    """Mean microseconds of the tool method called directly, as a library."""
    weather = Weather()
    started = time.perf_counter()
    for _ in range(calls):
        weather("Oslo")
    return (time.perf_counter() - started) / calls * 1e6


async def call_ms(http: aiohttp.ClientSession, url: str, body: str) -> float:
    """One tool call's milliseconds; raises on any answer but 200."""
    started = time.perf_counter()
    async with http.post(url, data=body, headers={"content-type": "application/json"}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")
    return (time.perf_counter() - started) * 1000


async def sequential_ms(http: aiohttp.ClientSession, url: str, calls: int) -> list[float]:
    body = json.dumps({"arguments": {"city": "Oslo"}})
    return [await call_ms(http, url, body) for _ in range(calls)]


async def closed_loop(http: aiohttp.ClientSession, url: str, seconds: float,
                      concurrency: int) -> tuple[float, list[float]]:
    """(calls per second, latencies in ms) of ``concurrency`` clients for ``seconds``."""
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def client(n: int) -> None:
        body = json.dumps({"arguments": {"text": f"text {n}"}})
        while time.perf_counter() < end:
            latencies.append(await call_ms(http, url, body))

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


def summary(latencies: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(latencies, 0.5), 3),
            "p99_ms": round(percentile(latencies, 0.99), 3),
            "mean_ms": round(sum(latencies) / len(latencies), 3)}


async def run(calls: int, seconds: float, concurrency: int) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="llmgw-bench-tools-"))
    (port,) = free_ports(1)
    path = logs / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config(port)))
    gateway: Proc = spawn("gateway", [sys.executable, "-m", "llmgw", "up", str(path)], port,
                          logs)
    try:
        await wait_ready(gateway, "/ready", 120)
        limits = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=limits) as http:
            tools = gateway.url + "/v1/tools/"
            await sequential_ms(http, tools + "weather", 20)  # warm-up: connections, imports
            await sequential_ms(http, tools + "weather_local", 20)
            result: dict[str, Any] = {"in_process_us": round(in_process_us(calls), 2)}
            for name in ("weather", "weather_local"):
                result[name] = summary(await sequential_ms(http, tools + name, calls))
            for name in ("vec", "vec_off"):
                rate, latencies = await closed_loop(http, f"{tools}{name}_score", seconds,
                                                    concurrency)
                result[name] = {"calls_per_s": round(rate, 1), **summary(latencies)}
        return result
    finally:
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.calls, args.seconds, args.concurrency))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
