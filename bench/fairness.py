"""Two tenants on one saturated model: does a flood starve a quieter tenant?

    python -m bench.fairness [--requests 200] [--out bench/out/fairness.json]

Two simulated replicas (bench/fleet_sim's engine: ``--max-running`` batch slots each,
a FIFO queue past them, 5 ms per decode step) behind llmgw, two API keys of equal weight
and priority. ``quiet`` streams with 2 requests at once; ``flood`` with 20 (10x). The
quiet tenant's time to first token is measured alone, then under the flood, with the
model's ``admission:`` off (requests queue in the engines, first come first served) and
on (``max_in_flight_per_replica`` = the engine's batch slots: requests past them wait in
the gateway's fair queue). Goal (issue 13): quiet TTFT p99 under the flood within 1.5x
of its unloaded value.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
import yaml

from bench.processes import Proc, free_ports, spawn, wait_ready
from llmgw.tenancy.keys import hash_key

KEYS = {"quiet": "llmgw-bench-quiet", "flood": "llmgw-bench-flood"}
SLOTS = 4  # the engine's batch slots per replica
BODY = orjson.dumps({"model": "sim", "stream": True, "max_tokens": 32,
                     "messages": [{"role": "user", "content": "Tell me about gateways."}]})


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def one(http: aiohttp.ClientSession, url: str, key: str) -> float | None:
    """A streamed request; seconds to its first content chunk (None if it failed)."""
    started = time.perf_counter()
    async with http.post(url, data=BODY, headers={
            "authorization": f"Bearer {KEYS[key]}",
            "content-type": "application/json"}) as response:
        if response.status != 200:
            await response.read()
            return None
        first = None
        async for line in response.content:
            if first is None and line.startswith(b"data: {") and b'"content"' in line:
                first = time.perf_counter() - started
        return first


async def closed_loop(http: aiohttp.ClientSession, url: str, key: str, workers: int,
                      count: int | None, stop: asyncio.Event) -> list[float | None]:
    """``workers`` back-to-back senders: ``count`` requests in all, or until ``stop``."""
    results: list[float | None] = []

    async def worker() -> None:
        while not stop.is_set() and (count is None or len(results) < count):
            results.append(await one(http, url, key))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return results


async def measure(url: str, requests: int) -> dict[str, object]:
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        never = asyncio.Event()
        await closed_loop(http, url, "quiet", 2, 20, never)  # warm up connections
        alone = await closed_loop(http, url, "quiet", 2, requests, never)
        stop = asyncio.Event()
        flood = asyncio.create_task(closed_loop(http, url, "flood", 20, None, stop))
        await asyncio.sleep(2)  # let the flood fill every queue first
        started = time.perf_counter()
        loaded = await closed_loop(http, url, "quiet", 2, requests, never)
        stop.set()
        flooded = await flood
        elapsed = time.perf_counter() - started
    ok_alone = [t for t in alone if t is not None]
    ok_loaded = [t for t in loaded if t is not None]
    return {
        "quiet_ttft_p50_ms_alone": percentile(ok_alone, 0.5) * 1000,
        "quiet_ttft_p99_ms_alone": percentile(ok_alone, 0.99) * 1000,
        "quiet_ttft_p50_ms_flood": percentile(ok_loaded, 0.5) * 1000,
        "quiet_ttft_p99_ms_flood": percentile(ok_loaded, 0.99) * 1000,
        "p99_ratio": percentile(ok_loaded, 0.99) / percentile(ok_alone, 0.99),
        "quiet_errors": len(alone) + len(loaded) - len(ok_alone) - len(ok_loaded),
        "flood_requests_per_s": sum(t is not None for t in flooded) / elapsed,
        "flood_errors": sum(t is None for t in flooded),
    }


def gateway_config(port: int, engines: list[int], admission: bool, state: Path) -> dict:
    model: dict[str, object] = {"name": "sim", "engine": "openai",
                                "url": [f"http://127.0.0.1:{p}" for p in engines]}
    if admission:
        model["admission"] = {"max_in_flight_per_replica": SLOTS, "max_queued": 1024,
                              "queue_timeout_s": 60}
    return {"server": {"port": port, "state_dir": str(state)}, "health": {"interval_s": 1},
            "models": [model],
            "auth": {"keys": [{"name": n, "hash": hash_key(k)} for n, k in KEYS.items()]}}


async def run(requests: int, logs: Path) -> dict[str, dict[str, object]]:
    *engines, gw_port = free_ports(3)
    engine = spawn("sim", [sys.executable, "-m", "bench.fleet_sim.sim_engine", "--ports",
                           ",".join(map(str, engines)), "--model", "sim",
                           "--max-running", str(SLOTS)], engines[0], logs)
    results: dict[str, dict[str, object]] = {}
    try:
        await wait_ready(engine, "/health", 30)
        for mode in ("off", "on"):
            path = logs / f"gateway-{mode}.yaml"
            path.write_text(yaml.safe_dump(gateway_config(gw_port, engines, mode == "on",
                                                           logs / "state")))
            gateway: Proc = spawn(f"gateway-{mode}", [sys.executable, "-m", "llmgw", "up",
                                                      str(path)], gw_port, logs)
            try:
                await wait_ready(gateway, "/ready", 60)
                results[f"admission {mode}"] = await measure(
                    gateway.url + "/v1/chat/completions", requests)
            finally:
                gateway.stop()
    finally:
        engine.stop()
    return results


def table(results: dict[str, dict[str, object]]) -> str:
    rows = ["| admission | quiet TTFT p50 / p99 alone (ms) | under a 10x flood (ms) | "
            "p99 ratio | flood req/s | errors |", "| --- | --- | --- | --- | --- | --- |"]
    for mode, r in results.items():
        rows.append(
            f"| {mode.split()[1]} | {r['quiet_ttft_p50_ms_alone']:.1f} / "
            f"{r['quiet_ttft_p99_ms_alone']:.1f} | {r['quiet_ttft_p50_ms_flood']:.1f} / "
            f"{r['quiet_ttft_p99_ms_flood']:.1f} | {r['p99_ratio']:.2f}x | "
            f"{r['flood_requests_per_s']:.1f} | {r['quiet_errors']} / {r['flood_errors']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="quiet requests per phase")
    parser.add_argument("--out", type=Path, default=Path("bench/out/fairness.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmgw-fairness-") as tmp:
        results = asyncio.run(run(args.requests, Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        args.out.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
