"""LoRA multiplexing with real engines: llmgw's adapter-aware routing vs random routing,
in one run, on the same two engines and the same seeded Zipf workload.

    .venv/bin/python -m bench.lora [--requests 300] [--rounds 2] [--concurrency 8]

Two embedded engines serve the demo model with LoRA on (``--max-loras 4``); 32 demo
adapters are built offline. For each policy a gateway is started attached to both
engines, with the adapters as ``source: demo`` and 4 slots per replica:

* ``least-load``: a LoRA model's pipeline gets the ``lora-affinity`` scorer added
  (resident beats a free slot beats evicting): adapter-aware;
* ``random``: a seeded uniform shuffle of the replicas, blind to adapters.

Only one gateway drives the engines at a time. Before each turn every adapter is
unloaded from both engines (each turn starts cold), then that policy's gateway starts,
replays the workload, its /metrics are read, and it stops. Turns alternate their order
over rounds; each round has its own seed, the same for both policies.
Loads and evictions are the gateway's own counters; latency is measured at the client.
Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/lora/run.py
    sys.path.insert(0, str(ROOT))

from bench.lora import report  # noqa: E402
from bench.lora.workload import ADAPTER, build, fewest_loads, replay  # noqa: E402
from llmgw.engines.demo_lora import build_demo_adapters  # noqa: E402
from tests.support import Server, free_port, start_gateway  # noqa: E402

AWARE, RANDOM = "least-load", "random"
POLICIES = (AWARE, RANDOM)
# HotnessConfig's defaults, spelled out so the table says what ran.
HOTNESS = {"enabled": True, "interval_s": 2.0, "hot_rate": 2.0, "window_s": 30.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--requests", type=int, default=300, help="requests per policy per round")
    p.add_argument("--rounds", type=int, default=2, help="turns per policy, order alternating")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--adapters", type=int, default=32)
    p.add_argument("--slots", type=int, default=4, help="adapters per replica (--max-loras)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s of popularity")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--engine-threads", type=int, default=1, help="torch threads per engine")
    p.add_argument("--seed", type=int, default=0, help="round r uses seed + r")
    p.add_argument("--timeout", type=float, default=120, help="seconds per request")
    return p.parse_args(argv)


def start_engine(args: argparse.Namespace) -> Server:
    port = free_port()
    return Server([sys.executable, "-m", "llmgw.engines.embedded", "--model", "demo",
                   "--served-model-name", "demo", "--port", str(port), "--log-level", "warning",
                   "--num-threads", str(args.engine_threads), "--enable-lora",
                   "--max-loras", str(args.slots), "--max-lora-rank", "16"],
                  port, "/health", timeout_s=180)


def loaded_adapters(engine: Server) -> list[str]:
    """What the engine holds now, from its own listing (adapters carry a ``parent``)."""
    models = httpx.get(engine.url + "/v1/models", timeout=30).json()["data"]
    return [m["id"] for m in models if m.get("parent")]


def unload_all(engines: list[Server]) -> None:
    for engine in engines:
        for name in loaded_adapters(engine):
            httpx.post(engine.url + "/v1/unload_lora_adapter", json={"lora_name": name},
                       timeout=30).raise_for_status()
        if loaded_adapters(engine):
            raise RuntimeError(f"{engine.url} still holds adapters after unloading them")


def gateway_config(policy: str, engines: list[Server], args: argparse.Namespace,
                   state_dir: Path) -> dict[str, Any]:
    adapters = [{"name": ADAPTER.format(i), "source": "demo"} for i in range(args.adapters)]
    return {
        "server": {"state_dir": str(state_dir), "log_level": "warning"},
        "models": [{
            "name": "demo", "engine": "transformers", "url": [e.url for e in engines],
            "routing": policy,
            "lora": {"max_adapters_per_replica": args.slots, "max_rank": 16,
                     "adapters": adapters, "hotness": HOTNESS},
        }],
    }


def run_turn(policy: str, engines: list[Server], args: argparse.Namespace, seed: int,
             tmp: Path) -> report.PolicyResult:
    """One policy's turn from cold engines: start its gateway, replay, read, stop."""
    unload_all(engines)
    state_dir = tmp / f"state-{policy}-{seed}"  # runtime adapter state: none, kept apart
    gateway = start_gateway(gateway_config(policy, engines, args, state_dir), tmp)
    try:
        requests = build(args.requests, args.adapters, args.zipf, seed)
        outcomes, wall = asyncio.run(replay(gateway.url, requests, args.concurrency,
                                            args.max_tokens, args.timeout))
        metrics = httpx.get(gateway.url + "/metrics", timeout=30).text
    finally:
        gateway.stop()
    counters = report.lora_counters(metrics)
    held = [len(loaded_adapters(e)) for e in engines]
    result = report.PolicyResult(policy, outcomes, wall, counters)
    print(f"  {policy:<10} seed {seed}: {len(outcomes)} requests in {wall:.1f}s, "
          f"{len(result.errors)} errors, loads {counters.loads:.0f}, evictions "
          f"{counters.evictions:.0f}, p99 {result.latency_ms(0.99):.0f} ms; engines hold "
          f"{held} adapters", flush=True)
    if result.errors:
        print(f"  (its gateway's log: {gateway.log.name})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    build_demo_adapters(args.adapters)  # offline, once: the gateways' `source: demo`
    started = time.monotonic()
    engines: list[Server] = []
    totals = {p: report.PolicyResult(p) for p in POLICIES}
    try:
        engines = [start_engine(args) for _ in range(args.replicas)]
        with tempfile.TemporaryDirectory(prefix="llmgw-bench-lora-") as tmp:
            for round_index in range(args.rounds):
                order = POLICIES if round_index % 2 == 0 else POLICIES[::-1]
                for policy in order:
                    turn = run_turn(policy, engines, args, args.seed + round_index, Path(tmp))
                    total = totals[policy]
                    total.outcomes += turn.outcomes
                    total.wall_s += turn.wall_s
                    total.counters = total.counters + turn.counters
    finally:
        for engine in engines:
            engine.stop()
    print(f"\n{args.replicas} embedded engines (demo model, --max-loras {args.slots}, "
          f"{args.engine_threads} torch thread each), {args.adapters} adapters, "
          f"Zipf s={args.zipf}; {args.rounds} rounds x {args.requests} requests per policy, "
          f"concurrency {args.concurrency}, max_tokens {args.max_tokens}, temperature 0; "
          f"{time.monotonic() - started:.0f} s\n")
    results = [totals[p] for p in POLICIES]
    print(report.table(results))
    print()
    slots = args.slots * args.replicas
    fewest = sum(fewest_loads([r.adapter for r in build(args.requests, args.adapters, args.zipf,
                                                        args.seed + i)], slots)
                 for i in range(args.rounds))
    for line in report.goals(totals[AWARE], totals[RANDOM], fewest):
        print("goal  " + line)
    failed = [o for r in results for o in r.errors]
    for line in report.error_kinds(results):
        print("error " + line)
    drift = sum(r.counters.drift for r in results)
    if drift:
        print(f"note  the gateways corrected their residency belief {drift:.0f} times "
              "(llmgw_lora_residency_drift_total)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
