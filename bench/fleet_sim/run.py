"""The fleet benchmark: the same seeded workloads through each router in front of the
same simulated replicas, cold caches each time.

    python -m bench.fleet_sim.run [--replicas 8] [--workload chat|agent|fewshot|noreuse|all]
        [--requests N] [--concurrency C] [--quick] [--targets a,b,...] [--instances 1,2,4]

For every workload and target: start the target (a router process, the in-process
oracle, or nothing for ``direct-random``), check one request goes through, empty the
sims' caches (``POST /sim/reset``), replay the workload, read the sims' counters, stop
the target. Prints a table per workload, a summary and the goals checked on chat
(``goals.py``); writes everything, with every request's record, to
``bench/out/fleet_sim-<time>.json``.

``--instances 1,2,4`` runs each llmgw target as 1, then 2, then 4 gateway processes on
the same sims, requests spread over them round robin, back to back so that the machine's
load drifts little between them, and prints a table comparing the counts side by side.
``--workers 1,2,4`` runs each llmgw target as one `llmgw up` with ``server.workers`` 1,
then 2, then 4 (processes on one port, the kernel spreading connections over them), and
prints the same side-by-side table for the worker counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.fleet_sim import goals
from bench.fleet_sim import targets as tg
from bench.fleet_sim.loadgen import Replay, Result, round_robin, send
from bench.fleet_sim.oracle import OracleProxy
from bench.fleet_sim.replica import CostModel
from bench.fleet_sim.report import Row, instances_table, summarize, summary, table, write_json
from bench.fleet_sim.workloads import NAMES, Workload, build
from bench.processes import REPO, Proc, StartError, cpu_s, free_ports, machine_busy_s, wait_ready

TARGETS = ("direct-random", "llmgw/round-robin", "llmgw/least-load", "llmgw/prefix-aware",
           "llmgw/session-aware", "sglang-router/cache_aware",
           "sglang-router/cache_aware-abs4-rel1.5", "oracle", "oracle-unbounded")
# The headline oracle is load-bounded: only replicas with fewer requests in flight than
# ORACLE_LOAD_FACTOR x the mean + 1 compete on prefix (llmgw's session bound). Without a
# bound, longest-prefix sends every request sharing a system prompt to one replica; that
# oracle stays as a reference row, "oracle-unbounded".
ORACLE_LOAD_FACTOR = 1.5
CHAT = "/v1/chat/completions"


@dataclass
class Context:
    """What every run shares: the fleet, its URLs by replica name, where logs go."""

    logs: Path
    sims: Proc
    urls: dict[str, str]  # sim-<port> -> base URL
    seed: int
    block_tokens: int
    lora: dict[str, object] | None = None  # llmgw's ``lora:`` for the model (targets.py)

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.sims.process.pid)

    async def fleet(self, http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        async with http.get(self.sims.url + "/sim/fleet") as response:
            data: dict[str, dict[str, Any]] = await response.json()
            return data

    async def reset(self, http: aiohttp.ClientSession) -> None:
        for url in self.urls.values():
            async with http.post(url + "/sim/reset") as response:
                response.raise_for_status()


@dataclass
class Running:
    """A started target: each request's URL, the URLs a probe must reach (every gateway
    instance), and the router's processes (none when the routing happens in this
    process, or nowhere)."""

    pick_url: Callable[[], str]
    probe_urls: list[str]
    processes: list[psutil.Process] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_target(name: str, ctx: Context, instances: int = 1,
                      workers: int = 1) -> AsyncIterator[Running]:
    """``instances`` and ``workers`` apply to llmgw only; the other targets are one router
    or none."""
    kind, _, policy = name.partition("/")
    urls = list(ctx.urls.values())
    if kind == "direct-random":
        rng = random.Random(ctx.seed)

        def pick() -> str:
            return rng.choice(urls) + CHAT

        # The probe draws from the same rng, as it always has: the replay's picks stay
        # those of earlier runs.
        yield Running(pick, [pick()])
    elif kind in ("oracle", "oracle-unbounded"):
        bound = ORACLE_LOAD_FACTOR if kind == "oracle" else None
        proxy = OracleProxy(ctx.urls, ctx.seed, ctx.block_tokens, bound)
        await proxy.start(free_ports(1)[0])
        try:
            yield Running(lambda: proxy.url + CHAT, [proxy.url + CHAT])
        finally:
            await proxy.stop()
    elif kind in ("llmgw", "sglang-router"):
        procs = (tg.start_llmgw(ctx.logs, policy, urls, instances, workers, ctx.lora)
                 if kind == "llmgw"
                 else [tg.start_sglang_router(ctx.logs, policy, urls)])
        try:
            for proc in procs:
                await wait_ready(proc, "/ready" if kind == "llmgw" else "/health", 60)
            chat_urls = [proc.url + CHAT for proc in procs]
            yield Running(round_robin(chat_urls), chat_urls,
                          [psutil.Process(proc.process.pid) for proc in procs])
        finally:
            for proc in procs:
                proc.stop()
    else:
        raise StartError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")


async def probe(url: str) -> None:
    """One small request must go through before a target is measured."""
    body = b'{"model":"sim","messages":[{"role":"user","content":"probe"}],"max_tokens":2,' \
           b'"stream":true,"stream_options":{"include_usage":true}}'
    result = Result("probe")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        await send(http, url, body, {"content-type": "application/json"}, result)
    if not result.ok:
        raise StartError(f"probe request failed: {result.error}")


async def run_one(name: str, workload: Workload, ctx: Context, args: argparse.Namespace,
                  instances: int = 1, arrivals: Sequence[float] | None = None,
                  workers: int = 1) -> Row:
    """One replay of ``workload`` through target ``name``: closed loop at
    ``args.concurrency``, or open loop at ``arrivals`` (offsets in seconds)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        try:
            # Reset before the start too: the last target's LoRA adapters are gone before
            # a gateway that tracks residency reads the engines' listings.
            await ctx.reset(http)
            async with open_target(name, ctx, instances, workers) as target:
                for url in target.probe_urls:
                    await probe(url)
                await ctx.reset(http)
                replay = Replay(workload, target.pick_url, tg.MODEL, args.concurrency,
                                args.active, ctx.seed)
                parties = {"sims": [ctx.process], "router": target.processes,
                           "client": [psutil.Process()]}

                def used_s(key: str) -> float:
                    return sum(cpu_s(p) for p in parties[key])

                before = {k: used_s(k) for k in parties}
                busy_before = machine_busy_s()
                wall = await replay.run(args.time_limit, arrivals)
                cpu = {k: (used_s(k) - before[k]) / wall for k in parties}
                # Whatever else ran meanwhile (a shared machine) competes for the same CPUs.
                cpu["other"] = max(0.0, (machine_busy_s() - busy_before) / wall - sum(cpu.values()))
                fleet = await ctx.fleet(http)
        except StartError as exc:
            return Row(name, workload.name, reason=" ".join(str(exc).split())[:300],
                       instances=instances, workers=workers)
    return summarize(name, workload.name, replay.results, wall, fleet, cpu, instances, workers,
                     ctx.block_tokens)


def _counts(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; every count at least 1, each once, in the order given."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be >= 1: {text!r}")
    return list(dict.fromkeys(counts))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="routing policies on a simulated engine fleet")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--workload", default="all", choices=[*NAMES, "all"])
    p.add_argument("--requests", type=int, default=384, help="per workload")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--active", type=int, default=0,
                   help="open sessions the workers interleave (default 2 x concurrency)")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--instances", type=_counts, default=[1],
                   help="llmgw gateway processes in front of the fleet, e.g. 1,2,4: each "
                        "llmgw target runs once per count (the other targets once)")
    p.add_argument("--workers", type=_counts, default=[1],
                   help="server.workers of each llmgw target, e.g. 1,2,4: processes on one "
                        "port; each llmgw target runs once per count")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per replay")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 4 replicas, 48 requests per workload, concurrency 8, "
                        "2 ms decode steps")
    p.add_argument("--out", type=Path, default=None, help="the JSON results file")
    cost = CostModel()
    p.add_argument("--prefill-ms-per-token", type=float, default=cost.prefill_ms_per_token)
    p.add_argument("--decode-ms-per-token", type=float, default=cost.decode_ms_per_token)
    p.add_argument("--max-running", type=int, default=cost.max_running)
    p.add_argument("--kv-blocks", type=int, default=cost.kv_blocks)
    p.add_argument("--block-tokens", type=int, default=cost.block_tokens)
    args = p.parse_args(argv)
    if args.quick:  # about a minute for every workload and target
        args.replicas, args.requests, args.concurrency = 4, 48, 8
        args.decode_ms_per_token = 2.0
        args.time_limit = min(args.time_limit, 20.0)
    args.active = args.active or 2 * args.concurrency
    return args


async def main_async(args: argparse.Namespace) -> list[Row]:
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    workloads = list(NAMES) if args.workload == "all" else [args.workload]
    logs = Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    ports = free_ports(args.replicas)
    flags = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in (
        "prefill_ms_per_token", "decode_ms_per_token", "max_running", "kv_blocks",
        "block_tokens")]
    sims = tg.start_sims(logs, ports, flags)
    ctx = Context(logs, sims, {f"sim-{p}": f"http://127.0.0.1:{p}" for p in ports}, args.seed,
                  args.block_tokens)
    rows: list[Row] = []
    try:
        await wait_ready(sims, "/health", 30)
        for workload_name in workloads:
            workload = build(workload_name, args.requests, args.seed)
            print(f"\n## {workload_name}: {workload.requests} requests in "
                  f"{len(workload.sessions)} sessions, {args.replicas} replicas, "
                  f"concurrency {args.concurrency}, {args.active} open sessions", flush=True)
            batch = []
            # Each llmgw target's instance counts run back to back: the comparison then
            # spans seconds of the machine's drifting load, not the whole run.
            for name, instances, workers in [
                    (n, k, w) for n in names
                    for k in (args.instances if n.startswith("llmgw/") else [1])
                    for w in (args.workers if n.startswith("llmgw/") else [1])]:
                started = time.monotonic()
                row = await run_one(name, workload, ctx, args, instances, workers=workers)
                print(f"  {row.label}: {time.monotonic() - started:.1f}s "
                      f"{row.reason or f'{row.ok} ok, {row.errors} errors'}", flush=True)
                batch.append(row)
            print("\n" + table(batch), flush=True)
            rows += batch
    finally:
        sims.stop()
    print("\n## Summary\n\n" + summary(rows) + "\n\n" + "\n".join(goals.check(rows)))
    if len(args.instances) > 1:
        print("\n## Gateway instances (ratio to the first count in brackets)\n\n"
              + instances_table(rows))
    if len(args.workers) > 1:
        print("\n## Workers of one gateway (ratio to the first count in brackets)\n\n"
              + instances_table(rows, by="workers"))
    print(f"\nprocess logs: {logs}")
    return rows


def finish(args: argparse.Namespace, rows: list[Row], started: float, stem: str) -> int:
    """Write the rows and the flags to ``args.out`` (default
    ``bench/out/<stem>-<time>.json``); the exit status: 1 when a row that ran had errors."""
    out = args.out or (REPO / "bench" / "out" / time.strftime(f"{stem}-%Y%m%d-%H%M%S.json"))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_json(out, config, rows)
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f}s; raw results: {out}")
    failed = [r for r in rows if not r.reason and (r.errors or not r.ok)]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    return finish(args, asyncio.run(main_async(args)), started, "fleet_sim")


if __name__ == "__main__":
    raise SystemExit(main())
