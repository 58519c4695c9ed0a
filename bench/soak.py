"""Soak: does the gateway hold steady under mixed traffic, disconnects, errors, rate limits
and a replica that dies?

Starts `llmgw up` with two launched fake engines (llmgw.engines.fake, a deterministic
stand-in) and two API keys, one with a low requests-per-minute limit, then runs bounded
waves of mixed requests: streaming and not, clients that drop mid-stream or before the
answer, bad input (bad JSON, an unknown role, a tool message without its id, no key),
unknown models and the limited key's 429s. Halfway through, one engine is killed with
SIGKILL in the middle of a wave; the launcher restarts it. After each wave it samples the
gateway's RSS, open file descriptors and TCP connections, and its in-flight gauges. A leak
shows as growth from wave to wave after the first (warm-up).

    python bench/soak.py --seconds 600          # the record in bench/README.md
    python bench/soak.py --seconds 12 --check   # exits 1 on growth (used by a test)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmgw.tenancy.keys import hash_key  # noqa: E402
from tests.support import Server, start_gateway, wait_until  # noqa: E402

MESSAGES = [{"role": "user", "content": "soak"}]
KEY, LIMITED_KEY = "soak-key", "soak-limited-key"
# 30 a minute: the limited key's share of a wave is mostly 429s after its first requests.
LIMITED_RPM = 30
KINDS = ["stream", "stream", "json", "json", "drop-stream", "drop-json", "bad-json",
         "bad-role", "bad-tool", "no-key", "unknown", "limited"]
# Bad bodies that pass JSON parsing: each must be a 400 before any engine sees it.
BAD_BODIES: dict[str, dict[str, Any]] = {
    "bad-role": {"model": "fake", "messages": [{"role": "wizard", "content": "x"}]},
    "bad-tool": {"model": "fake", "messages": [{"role": "tool", "content": "x"}]},
}


def config() -> dict[str, Any]:
    return {
        "health": {"interval_s": 0.5},
        "models": [{"name": "fake", "engine": "fake", "model": "fake", "replicas": 2,
                    "engine_args": {"token_delay_ms": 2}}],
        "auth": {"keys": [{"name": "soak", "hash": hash_key(KEY)},
                          {"name": "limited", "hash": hash_key(LIMITED_KEY),
                           "rpm": LIMITED_RPM}]},
    }


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def one_request(http: httpx.AsyncClient, kind: str, max_tokens: int) -> str:
    body: dict[str, Any] = {"model": "fake", "messages": MESSAGES, "max_tokens": max_tokens}
    post = "/v1/chat/completions"
    if kind == "bad-json":
        r = await http.post(post, content=b"{oops", headers=auth(KEY))
    elif kind in BAD_BODIES:
        r = await http.post(post, json=BAD_BODIES[kind], headers=auth(KEY))
    elif kind == "no-key":
        r = await http.post(post, json=body)
    elif kind.endswith("stream"):
        body["stream"] = True
        async with http.stream("POST", post, json=body, headers=auth(KEY)) as r:
            async for _ in r.aiter_raw():
                if kind == "drop-stream":
                    break
    elif kind == "drop-json":
        body["max_tokens"] = 500  # 500 x 2 ms: long enough to leave in the middle
        try:
            await http.post(post, json=body, headers=auth(KEY), timeout=0.2)
        except httpx.TimeoutException:
            return "drop-json:left"
        return "drop-json:finished"
    else:
        body["model"] = "nope" if kind == "unknown" else "fake"
        r = await http.post(post, json=body, headers=auth(LIMITED_KEY if kind == "limited"
                                                           else KEY))
    return f"{kind}:{r.status_code}"


def engine_children(gateway: Server) -> list[psutil.Process]:
    return [p for p in psutil.Process(gateway.proc.pid).children(recursive=True)
            if "llmgw.engines.fake" in " ".join(p.cmdline())]


async def wave(gateway: Server, requests: int, concurrency: int, rng: random.Random,
               kill_after: int | None) -> Counter[str]:
    """``kill_after``: SIGKILL one engine once this many of the wave's requests ended."""
    counts: Counter[str] = Counter()
    queue = [(rng.choice(KINDS), rng.randint(1, 64)) for _ in range(requests)]
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30, limits=limits) as http:
        async def worker() -> None:
            while queue:
                kind, max_tokens = queue.pop()
                try:
                    counts[await one_request(http, kind, max_tokens)] += 1
                except httpx.HTTPError as exc:  # a stream cut by the killed engine
                    counts[f"{kind}:{type(exc).__name__}"] += 1
                if kill_after is not None and counts.total() == kill_after:
                    engine_children(gateway)[0].send_signal(signal.SIGKILL)
                    counts["engine-killed"] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def scrape(gateway: Server, prefix: str) -> float:
    """The sum of a metric's samples in the gateway's /metrics."""
    text = httpx.get(gateway.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix + "{"))


def sample(gateway: Server) -> dict[str, float]:
    proc = psutil.Process(gateway.proc.pid)
    return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds(),
            "tcp": len(proc.net_connections(kind="tcp")),
            "in_flight": scrape(gateway, "llmgw_replica_in_flight_requests")}


def run(seconds: float, requests_per_wave: int, concurrency: int, min_waves: int = 1
        ) -> tuple[list[dict[str, float]], Counter[str], float]:
    """Rows per wave, outcomes over the run, and the engine restarts the gateway counted.
    At least ``min_waves`` waves however long they take (a busy machine runs fewer in
    ``seconds``, and growth is judged between the first and the last third of them), the
    engine killed in the second half of both."""
    tmp = Path(tempfile.mkdtemp(prefix="llmgw-soak-"))
    gateway = start_gateway(config(), tmp)
    rng = random.Random(0)
    rows: list[dict[str, float]] = []
    totals: Counter[str] = Counter()
    try:
        started_run = time.monotonic()
        killed = False
        while (time.monotonic() - started_run < seconds or len(rows) < min_waves) \
                and len(rows) < 10_000:
            kill = not killed and time.monotonic() - started_run >= seconds / 2 \
                and len(rows) >= min_waves // 2
            killed |= kill
            started = time.monotonic()
            counts = asyncio.run(wave(gateway, requests_per_wave, concurrency, rng,
                                      requests_per_wave // 4 if kill else None))
            totals += counts
            row = {"wave": len(rows), "secs": time.monotonic() - started, **sample(gateway),
                   "requests": sum(n for k, n in counts.items() if k != "engine-killed")}
            rows.append(row)
            print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()) + (" (engine killed)" if kill else ""),
                  flush=True)
        # The restarted engine is counted once it serves again (an outside process: poll).
        if killed:
            wait_until(lambda: scrape(gateway, "llmgw_replica_restarts_total") >= 1, 60,
                       "the killed engine to be restarted")
        restarts = scrape(gateway, "llmgw_replica_restarts_total")
    finally:
        gateway.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows, totals, restarts


def verdict(rows: list[dict[str, float]], totals: Counter[str], restarts: float) -> list[str]:
    """Growth after the warm-up wave, against loose bounds that a leak of one object per
    request would exceed many times over; and the mix really
    ran: 429s, 400s, 401s, one engine killed and restarted."""
    if len(rows) < 3:
        return ["too few waves to judge; run longer"]
    first, last = rows[1], rows[-1]
    problems = []
    if last["rss_mb"] - first["rss_mb"] > 8:
        problems.append(f"RSS grew {first['rss_mb']:.1f} -> {last['rss_mb']:.1f} MB")
    # Descriptors and connections follow the keep-alive pools (at concurrency 32 they
    # swing by 30 from one wave to the next): a leak lifts even the lowest late sample
    # above the highest early one.
    third = max(1, (len(rows) - 1) // 3)
    early, late = rows[1:1 + third], rows[-third:]
    for what, label in (("fds", "open fds"), ("tcp", "TCP connections")):
        high, low = max(r[what] for r in early), min(r[what] for r in late)
        if low - high > 10:
            problems.append(f"{label} grew: at most {high:.0f} early, at least {low:.0f} late")
    if any(row["in_flight"] != 0 for row in rows):
        problems.append("in-flight gauges not back to 0 after a wave")
    for expected in ("limited:429", "bad-json:400", "bad-role:400", "bad-tool:400",
                     "no-key:401", "unknown:404"):
        if totals[expected] == 0:
            problems.append(f"no {expected} in the run")
    if totals["engine-killed"] != 1 or restarts != 1:
        problems.append(f"expected one engine killed and restarted, got "
                        f"{totals['engine-killed']} killed, {restarts:.0f} restarted")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--requests", type=int, default=400, help="requests per wave")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--min-waves", type=int, default=1,
                        help="run at least this many waves, however long they take")
    parser.add_argument("--check", action="store_true", help="exit 1 on growth")
    args = parser.parse_args()
    rows, totals, restarts = run(args.seconds, args.requests, args.concurrency,
                                 args.min_waves)
    problems = verdict(rows, totals, restarts)
    print("outcomes: " + ", ".join(f"{k}={n}" for k, n in sorted(totals.items())))
    print(f"{len(rows)} waves, {sum(int(r['requests']) for r in rows)} requests, "
          f"{restarts:.0f} engine restart(s): " + ("; ".join(problems) or "no growth"))
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
