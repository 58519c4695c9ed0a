"""Soak: does the gateway hold steady under mixed traffic, disconnects and errors?

Starts `llmgw up` in front of two fake engines (llmgw.engines.fake, a deterministic
stand-in), then runs bounded waves of mixed requests: streaming and not, clients that
drop mid-stream or before the answer, bad input, unknown models. After each wave it
samples the gateway's RSS, open file descriptors and TCP connections, and its
in-flight gauges. A leak shows as growth from wave to wave after the first (warm-up).

    python bench/soak.py --seconds 180          # the record in bench/README.md
    python bench/soak.py --seconds 20 --check   # exits 1 on growth (used by a test)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import Server, start_fake_engine, start_gateway  # noqa: E402

MESSAGES = [{"role": "user", "content": "soak"}]


async def one_request(http: httpx.AsyncClient, rng: random.Random) -> str:
    kind = rng.choice(["stream", "stream", "json", "json", "drop-stream", "drop-json",
                       "bad", "unknown"])
    body: dict[str, object] = {"model": "fake", "messages": MESSAGES,
                               "max_tokens": rng.randint(1, 64)}
    if kind == "bad":
        r = await http.post("/v1/chat/completions", content=b"{oops")
        return f"{kind}:{r.status_code}"
    if kind == "unknown":
        body["model"] = "nope"
    if kind.endswith("stream"):
        body["stream"] = True
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            async for _ in r.aiter_raw():
                if kind == "drop-stream":
                    break
        return f"{kind}:{r.status_code}"
    if kind == "drop-json":
        body["max_tokens"] = 500  # 500 x 2 ms: long enough to leave in the middle
        try:
            await http.post("/v1/chat/completions", json=body, timeout=0.2)
        except httpx.TimeoutException:
            return "drop-json:left"
        return "drop-json:finished"
    r = await http.post("/v1/chat/completions", json=body)
    return f"{kind}:{r.status_code}"


async def wave(url: str, requests: int, concurrency: int, rng: random.Random) -> dict[str, int]:
    counts: dict[str, int] = {}
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        async def worker() -> None:
            while queue:
                queue.pop()
                outcome = await one_request(http, rng)
                counts[outcome] = counts.get(outcome, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def sample(gateway: Server) -> dict[str, float]:
    proc = psutil.Process(gateway.proc.pid)
    metrics = httpx.get(gateway.url + "/metrics").text
    in_flight = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                    if line.startswith("llmgw_replica_in_flight_requests{"))
    return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(),
            "tcp": len(proc.net_connections(kind="tcp")), "in_flight": in_flight}


def run(seconds: float, requests_per_wave: int, concurrency: int) -> list[dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="llmgw-soak-"))
    engines = [start_fake_engine("--token-delay-ms", "2") for _ in range(2)]
    gateway = start_gateway({"models": [{"name": "fake", "engine": "openai",
                                         "url": [e.url for e in engines]}]}, tmp)
    rng = random.Random(0)
    rows: list[dict[str, float]] = []
    try:
        deadline = time.monotonic() + seconds
        index = 0
        while time.monotonic() < deadline and index < 1000:
            started = time.monotonic()
            counts = asyncio.run(wave(gateway.url, requests_per_wave, concurrency, rng))
            row = {"wave": index, "secs": time.monotonic() - started, **sample(gateway),
                   "requests": sum(counts.values())}
            rows.append(row)
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)
            index += 1
    finally:
        gateway.stop()
        for engine in engines:
            engine.stop()
    return rows


def verdict(rows: list[dict[str, float]]) -> list[str]:
    """Growth between the wave after warm-up and the last one, against loose bounds that
    a leak of one object per request would exceed many times over."""
    if len(rows) < 3:
        return ["too few waves to judge; run longer"]
    first, last = rows[1], rows[-1]
    problems = []
    if last["rss_mb"] - first["rss_mb"] > 8:
        problems.append(f"RSS grew {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB")
    if last["fds"] - first["fds"] > 10:
        problems.append(f"open fds grew {first['fds']} -> {last['fds']}")
    if last["tcp"] - first["tcp"] > 10:
        problems.append(f"TCP connections grew {first['tcp']} -> {last['tcp']}")
    if any(row["in_flight"] != 0 for row in rows):
        problems.append("in-flight gauges not back to 0 after a wave")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--requests", type=int, default=400, help="requests per wave")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--check", action="store_true", help="exit 1 on growth")
    args = parser.parse_args()
    rows = run(args.seconds, args.requests, args.concurrency)
    problems = verdict(rows)
    total = sum(int(r["requests"]) for r in rows)
    print(f"{len(rows)} waves, {total} requests: " + ("; ".join(problems) or "no growth"))
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
