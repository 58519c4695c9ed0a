"""Does a second gateway worker add a core's worth of throughput (two workers, each capped).

Issue 16's goal: with 2 workers on a machine with a core per worker, at least 1.7x one
worker's requests/s.

One instant engine, and ``llmgw up`` once per worker count (``server.workers: 1``, ``2``,
each on its own port, the default routing policy). Each worker process gets a CPU of its
own: by default its own cgroup capped at ``--cpus-per-worker`` of a CPU (CFS bandwidth,
``bench/cpu_caps.py``), which makes a 2-core machine stand for one with a slow core per
worker while the load generator and the engine use the rest; ``--pin`` pins each worker to
a CPU instead (needs workers + 2 CPUs). Then json16-like closed-loop rounds (non-streaming,
16 tokens), alternating 1 worker, 2 workers, 1, 2, ...

    python bench/workers.py                         # 1 and 2 workers, 5 rounds, 0.25 CPU each
    python bench/workers.py --workers 1,2,4 --cpus-per-worker 0.2 --period-ms 100
    python bench/workers.py --quick                 # 1 small round (smoke test)
    python bench/workers.py --cpus-per-worker 0     # no cap, no cgroups needed
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil
from cpu_caps import CpuCaps, find_controller, pin
from instant_engine import loop_factory
from loadgen import Workload, new_session, run_round
from processes import Proc, StartError, cpu_s, machine_busy_s, own_cpu_s, wait_ready
from report import revision
from targets import start_engine, start_llmgw
from workers_report import Gateway, Round, print_ratios, print_rounds, summarize

WORKER_HEADER = "x-llmgw-worker"  # which worker answered (absent with one worker)


async def find_workers(gw: Gateway, timeout_s: float = 60) -> list[psutil.Process]:
    """The worker processes, once each of them listens on the gateway's port."""
    top = psutil.Process(gw.proc.process.pid)
    if gw.workers == 1:
        return [top]
    port = int(gw.proc.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            found = [
                c
                for c in top.children()
                if "llmgw.workers.worker" in c.cmdline()
                and any(
                    s.status == psutil.CONN_LISTEN and s.laddr.port == port
                    for s in c.net_connections("tcp")
                )
            ]
            if len(found) == gw.workers:
                return sorted(found, key=_index)
        await asyncio.sleep(0.1)
    raise StartError(f"{gw.name}: not {gw.workers} workers listening after {timeout_s:.0f}s")


def _index(worker: psutil.Process) -> int:
    argv = worker.cmdline()
    return int(argv[argv.index("--index") + 1])


def limit(
    args: argparse.Namespace, stack: contextlib.ExitStack, gateways: list[Gateway], engine: Proc
) -> str:
    """Give every worker its CPU (cap or pin, as asked); say how, for the setup line."""
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        rest = set(cpus[args.workers[-1] :])
        os.sched_setaffinity(0, rest)
        pin(engine.process.pid, rest)
        for gw in gateways:
            pin(gw.proc.process.pid, rest)  # the supervisor (the one worker is pinned below)
            for index, worker in enumerate(gw.serving):
                pin(worker.pid, {cpus[index]})
        return (
            f"worker K pinned to CPU K of {cpus}; load generator, engine and supervisors "
            f"on CPUs {sorted(rest)}"
        )
    if args.cpus_per_worker <= 0:
        return "no cap: workers, load generator and engine share every CPU"
    controller = find_controller()
    assert controller is not None  # checked before anything started
    caps = CpuCaps(controller, args.cpus_per_worker, round(args.period_ms * 1000))
    stack.callback(caps.close)  # runs before the gateways stop: they drain uncapped
    for gw in gateways:
        gw.groups = [caps.cap(f"{gw.name}-{i}", w.pid) for i, w in enumerate(gw.serving)]
        gw.cap = args.cpus_per_worker
    return f"each worker in its own cgroup capped at {caps.describe()}"


def _clock(gw: Gateway, engine: Proc) -> list[float]:
    workers = sum(cpu_s(w) for w in gw.serving)
    # The supervisor's own CPU: its process tree's less the workers'.
    tree = cpu_s(psutil.Process(gw.proc.process.pid)) if gw.workers > 1 else workers
    periods = [CpuCaps.throttling(g) for g in gw.groups]
    return [
        workers,
        tree - workers,
        own_cpu_s(),
        engine.cpu_s(),
        machine_busy_s(),
        sum(p for p, _ in periods),
        sum(t for _, t in periods),
    ]


async def measure(
    gw: Gateway, engine: Proc, w: Workload, requests: int, time_limit_s: float
) -> Round:
    url = gw.proc.url + "/v1/chat/completions"
    async with new_session(w, 60.0) as session:  # fresh connections: the kernel spreads them
        await run_round(session, url, w, 2 * w.concurrency, time_limit_s)
        before = _clock(gw, engine)
        result = await run_round(session, url, w, requests, time_limit_s, tally=WORKER_HEADER)
        after = _clock(gw, engine)
    if not all(p.is_running() for p in gw.serving):
        raise StartError(f"a worker of {gw.name} exited: {gw.proc.tail()}")
    d = [b - a for a, b in zip(before, after, strict=True)]
    return Round(gw, result, *d[:5], throttled=d[6] / d[5] if d[5] else float("nan"))


async def run(args: argparse.Namespace) -> int:
    if args.workers[0] != 1:
        print("--workers must start with 1 (the reference)", file=sys.stderr)
        return 2
    if args.pin and len(os.sched_getaffinity(0)) < args.workers[-1] + 2:
        print(
            f"--pin needs {args.workers[-1] + 2} CPUs (one per worker, and two for the load "
            f"generator and the engine); this machine has {len(os.sched_getaffinity(0))}",
            file=sys.stderr,
        )
        return 2
    if not args.pin and args.cpus_per_worker > 0 and find_controller() is None:
        print(
            "capping workers needs a writable cgroup CPU controller (root; cgroup v1 `cpu` or "
            "v2 with `cpu` in cgroup.controllers). Without one: --pin on a machine with "
            "workers + 2 CPUs, or --cpus-per-worker 0 (no cap)",
            file=sys.stderr,
        )
        return 2
    w = Workload(stream=False, max_tokens=16, concurrency=args.concurrency)
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-") as tmp, contextlib.ExitStack() as stack:
        logs = Path(tmp)
        engine = start_engine(logs, 0.0, None)
        stack.callback(engine.stop)
        gateways: list[Gateway] = []
        for n in args.workers:
            gw = Gateway(
                n,
                start_llmgw(
                    logs, engine.url, None, workers=n, name=f"llmgw-{n}w", routing=args.routing
                ),
            )
            stack.callback(gw.proc.stop)
            gateways.append(gw)
        try:
            await wait_ready(engine, "/health", 60)
            await asyncio.gather(*(wait_ready(gw.proc, "/ready", 90) for gw in gateways))
            for gw in gateways:
                gw.serving = await find_workers(gw)
        except StartError as exc:
            print(f"did not start: {exc}", file=sys.stderr)
            return 1
        how = limit(args, stack, gateways, engine)
        print(
            f"llmgw workers benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}, llmgw "
            f"{revision()}, {os.cpu_count()} CPUs; {how}; non-streaming, 16 tokens, "
            f"concurrency {w.concurrency}, {args.rounds} rounds x {args.requests} requests"
        )
        for gw in gateways:
            print(
                f"  {gw.name}: {gw.proc.url}, pids {[p.pid for p in gw.serving]}"
                + (f", supervisor {gw.proc.process.pid}" if gw.workers > 1 else "")
            )
        sys.stdout.flush()
        rounds = [
            await measure(gw, engine, w, args.requests, args.round_time_limit)
            for _ in range(args.rounds)
            for gw in gateways
        ]
        print_rounds(rounds, len(gateways))
        print_ratios(summarize(gateways, rounds), gateways, rounds)
        return 1 if any(r.result.errors for r in rounds) else 0


def _counts(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--workers", type=_counts, default="1,2", help="worker counts, 1 first (1,2)")
    add("--cpus-per-worker", type=float, default=0.25, help="CFS cap, CPUs; 0: none (0.25)")
    add("--period-ms", type=float, default=10.0, help="CFS period (10 ms)")
    add("--pin", action="store_true", help="each worker on a CPU of its own, no caps")
    add("--concurrency", type=int, default=32, help="connections, all workers (32)")
    add("--requests", type=int, default=6000, help="per round (6000)")
    add("--rounds", type=int, default=5, help="per worker count (5)")
    add("--round-time-limit", type=float, default=30.0, help="no new request after (30 s)")
    add("--routing", default="prefix-aware", help="the model's policy (prefix-aware)")
    add("--quick", action="store_true", help="1 round of 300 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 1, 300
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
