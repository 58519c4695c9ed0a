"""What does llmgw cost per request, against the engine alone and against other proxies?

One command starts, each as its own process on a free loopback port: the instant engine
stand-in (``bench/instant_engine.py``), llmgw attached to it, a FastAPI + httpx baseline
proxy (``bench/baseline_proxy.py``) and, when the ``sglang-router`` wheel is installed, the
Rust SGLang router. For each scenario it loads every target in turn, round after round
(the order rotates each round), so drifting noise hits all of them alike, then pools the
rounds per target and prints a table: requests/s, p50/p99 latency, p50/p99 time to the
first body byte (streams), and the CPU milliseconds per request of the proxy process.

    python bench/overhead.py                      # all scenarios, 5 rounds (~5 min, 2 cores)
    python bench/overhead.py --quick              # small counts, < 60 s (smoke test)
    python bench/overhead.py --only json16-c16 --rounds 3 --requests 600
    python bench/overhead.py --profile            # py-spy on llmgw: bench/out/llmgw.svg

The load generator runs in this process (uvloop + aiohttp), which otherwise only sleeps
while a round runs: it is one dedicated client process, the same for every target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
import psutil
from fleet import STARTERS, Fleet, Noise, measure, measure_quietly
from instant_engine import loop_factory
from loadgen import Workload
from processes import StartError
from profiling import Sampler, gc_lines, pyspy, render, summarize
from report import (
    DIRECT,
    LLMGW,
    SUMMARY_HEAD,
    Pooled,
    goals,
    ratios,
    revision,
    summary_row,
    table,
)
from targets import BENCH, Layout, start_llmgw


@dataclass(frozen=True)
class Scenario:
    name: str
    workload: Workload
    requests: int  # per target per round, by default

    def describe(self) -> str:
        w = self.workload
        kind = "streaming" if w.stream else "non-streaming"
        return f"{kind}, {w.max_tokens} tokens, concurrency {w.concurrency}"


SCENARIOS = (
    Scenario("json16-c1", Workload(stream=False, max_tokens=16, concurrency=1), 1000),
    Scenario("json16-c16", Workload(stream=False, max_tokens=16, concurrency=16), 3000),
    Scenario("json16-c64", Workload(stream=False, max_tokens=16, concurrency=64), 3000),
    Scenario("sse16-c1", Workload(stream=True, max_tokens=16, concurrency=1), 1000),
    Scenario("sse16-c16", Workload(stream=True, max_tokens=16, concurrency=16), 2000),
    Scenario("sse16-c64", Workload(stream=True, max_tokens=16, concurrency=64), 2000),
    Scenario("sse1000-c1", Workload(stream=True, max_tokens=1000, concurrency=1), 60),
    Scenario("sse1000-c16", Workload(stream=True, max_tokens=1000, concurrency=16), 160),
)


async def run_scenario(fleet: Fleet, scenario: Scenario, rounds: int, time_limit_s: float,
                       noise: Noise) -> dict[str, Pooled]:
    names = list(fleet.targets)
    rows = {name: Pooled(name) for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            sample, retried = await measure_quietly(
                fleet.targets[name], fleet, scenario.workload, scenario.requests, time_limit_s,
                noise)
            rows[name].add(sample)
            rows[name].remeasured += retried
    for name, why in fleet.unavailable.items():
        rows[name] = Pooled(name, unavailable=why.replace("|", "/")[:160])
    return rows


def print_scenario(scenario: Scenario, rows: dict[str, Pooled], rounds: int) -> None:
    print(f"\n### {scenario.name}: {scenario.describe()} "
          f"({rounds} rounds x {scenario.requests} requests per target)\n")
    print("\n".join(table(list(rows.values()))))
    print()
    print("\n".join(ratios(rows)))
    for row in rows.values():
        if row.error_sample:
            print(f"first error on {row.name}: {row.error_sample}")
    sys.stdout.flush()


# --- profiling ------------------------------------------------------------------------------


async def profile_llmgw(fleet: Fleet, scenario: Scenario, time_limit_s: float) -> int:
    """llmgw alone on one scenario: a phase with its GC pauses recorded, then py-spy for
    the flame graph, then py-spy for the text summary."""
    exe = pyspy()
    if exe is None:
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    gateway = fleet.targets[LLMGW]
    # Warm the code paths up before measuring.
    w = scenario.workload
    await measure(gateway, fleet, w, w.concurrency * 4, time_limit_s)
    print(f"\n### profile of llmgw, {scenario.name}: {scenario.describe()}, "
          f"{scenario.requests} requests per phase (py-spy phases include its pauses)\n")
    gc_row, gc_stats, split = await _gc_phase(fleet, scenario, time_limit_s)
    rows = [gc_row]
    for path, fmt in ((out / "llmgw.svg", "flamegraph"), (out / "llmgw.collapsed.txt", "raw")):
        sampler = Sampler(exe, gateway.process.pid, path, fmt, rate=250, blocking=fmt != "raw")
        await asyncio.sleep(1.0)  # py-spy attaching
        rows.append(Pooled(f"llmgw (py-spy, {fmt})"))
        rows[-1].add(await measure(gateway, fleet, w, scenario.requests, time_limit_s))
        problem = sampler.stop()
        if problem:
            print(f"py-spy failed: {problem}", file=sys.stderr)
            return 1
    print("\n".join(table(rows)))
    print()
    user_ms, sys_ms = (1000 * t / max(gc_row.ok, 1) for t in split)
    print(f"llmgw CPU without a profiler: user {user_ms:.3f} + system {sys_ms:.3f} ms/request "
          f"(system time is mostly socket reads and writes)")
    print("\n".join(gc_lines(gc_stats, gc_row.cpu_s)))
    print(f"\nflame graph: {out / 'llmgw.svg'}\ncollapsed stacks: {out / 'llmgw.collapsed.txt'}\n")
    print("\n".join(render(summarize(out / "llmgw.collapsed.txt"))))
    return 0


GCStats = dict[str, dict[str, float]]


async def _gc_phase(fleet: Fleet, scenario: Scenario,
                    time_limit_s: float) -> tuple[Pooled, GCStats, tuple[float, float]]:
    """A phase without a profiler: llmgw's GC pauses (recorded by bench/gc_probe.py) and
    its (user, system) CPU seconds."""
    gateway, stats = fleet.targets[LLMGW], fleet.logs / "llmgw-gc.json"
    os.kill(gateway.process.pid, signal.SIGUSR1)  # start counting afresh
    await asyncio.sleep(0.2)
    stats.unlink(missing_ok=True)
    row = Pooled("llmgw (no profiler)")
    before = psutil.Process(gateway.process.pid).cpu_times()
    row.add(await measure(gateway, fleet, scenario.workload, scenario.requests, time_limit_s))
    after = psutil.Process(gateway.process.pid).cpu_times()
    split = (after.user - before.user, after.system - before.system)
    os.kill(gateway.process.pid, signal.SIGUSR1)
    for _ in range(50):
        if stats.exists():
            return row, json.loads(stats.read_text()), split
        await asyncio.sleep(0.1)
    return row, {}, split


# --- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help="1 round, small request counts: < 60 s (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per scenario (5)")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per target per round, for every selected scenario")
    parser.add_argument("--only", default=None,
                        help="comma-separated scenario names or prefixes, e.g. json16,sse1000-c1")
    parser.add_argument("--targets", default="llmgw,baseline,sglang-router",
                        help="proxies to compare with the direct engine (always measured); "
                             "also llmgw-gc-freeze (a what-if), llmgw-traced (tracing on) "
                             "and llmgw-main (with --main-tree)")
    parser.add_argument("--main-tree", type=Path, default=None,
                        help="a checkout (e.g. `git worktree add /tmp/main main`) whose llmgw "
                             "runs as the target llmgw-main, beside this tree's llmgw")
    parser.add_argument("--routing", default="least-load",
                        help="every llmgw target's routing policy (prefix-aware: the default "
                             "of a config that names none)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of comparing, profile llmgw under py-spy on one scenario "
                             "(the first of --only; json16-c16 by default)")
    parser.add_argument("--token-delay-ms", type=float, default=0.0,
                        help="pace the engine's stream events (0: instant)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let the scheduler place client, engine and proxy (default: "
                             "pin them to separate CPUs with taskset)")
    parser.add_argument("--noise-threshold", type=float, default=Noise.threshold,
                        help="CPUs used by other processes above which a round is re-measured")
    parser.add_argument("--noise-retries", type=int, default=Noise.retries,
                        help="re-measurements per round at most (0 with --quick)")
    parser.add_argument("--round-time-limit", type=float, default=15.0,
                        help="seconds after which a round stops sending new requests")
    return parser


def select(args: argparse.Namespace) -> list[Scenario]:
    wanted = [w.strip() for w in (args.only or "").split(",") if w.strip()]
    chosen = [s for s in SCENARIOS if not wanted or any(_matches(s.name, w) for w in wanted)]
    if args.profile:
        chosen = chosen[:1] if wanted else [s for s in SCENARIOS if s.name == "json16-c16"]
    if args.requests is not None:
        return [replace(s, requests=args.requests) for s in chosen]
    if args.quick:
        return [replace(s, requests=max(2 * s.workload.concurrency, s.requests // 20))
                for s in chosen]
    if args.profile:
        return [replace(s, requests=s.requests * 6) for s in chosen]
    return chosen


def _matches(name: str, wanted: str) -> bool:
    """``json16-c16`` exactly, ``json16`` for its three, ``sse`` for all streams."""
    return (name == wanted or name.startswith(wanted + "-")
            or (wanted.isalpha() and name.startswith(wanted)))


async def run(args: argparse.Namespace) -> int:
    scenarios = select(args)
    if not scenarios:
        print(f"no scenario matches --only {args.only!r}", file=sys.stderr)
        return 2
    rounds = args.rounds or (1 if args.quick else 5)
    names = [LLMGW] if args.profile else [n.strip() for n in args.targets.split(",")]
    starters = dict(STARTERS)
    if args.main_tree is not None:
        starters["llmgw-main"] = functools.partial(start_llmgw, tree=args.main_tree.resolve(),
                                                   name="llmgw-main")
    starters = {name: functools.partial(start, routing=args.routing)
                if name.startswith(LLMGW) else start for name, start in starters.items()}
    unknown = [n for n in names if n not in starters]
    if unknown:
        print(f"unknown --targets {unknown}; known: {', '.join(starters)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-") as tmp, \
            contextlib.ExitStack() as stack:
        layout = Layout.pinned() if args.pin else Layout()
        if layout.client is not None:
            os.sched_setaffinity(0, {layout.client})
        if args.profile:
            starters[LLMGW] = functools.partial(start_llmgw, probe=True, routing=args.routing)
        fleet = Fleet(stack, Path(tmp), layout, starters)
        try:
            await fleet.start(names, args.token_delay_ms)
        except StartError as exc:
            print(f"the instant engine did not start: {exc}", file=sys.stderr)
            return 1
        _print_setup(fleet)
        if LLMGW not in fleet.targets:
            print(f"llmgw did not start: {fleet.unavailable.get(LLMGW)}", file=sys.stderr)
            return 1
        if args.profile:
            return await profile_llmgw(fleet, scenarios[0], args.round_time_limit)
        noise = Noise(args.noise_threshold, 0 if args.quick else args.noise_retries)
        code = await compare(fleet, scenarios, rounds, args.round_time_limit, noise)
        if args.quick:
            print("note  --quick: too few requests for p99 or CPU per request to mean much")
        return code


async def compare(fleet: Fleet, scenarios: Sequence[Scenario], rounds: int,
                  time_limit_s: float, noise: Noise) -> int:
    summary, failed = list(SUMMARY_HEAD), False
    results: dict[str, dict[str, Pooled]] = {}
    for scenario in scenarios:
        rows = await run_scenario(fleet, scenario, rounds, time_limit_s, noise)
        results[scenario.name] = rows
        print_scenario(scenario, rows, rounds)
        summary.append(summary_row(scenario.name, rows))
        failed = failed or rows[LLMGW].errors > 0 or rows[DIRECT].errors > 0
    print("\n### summary: llmgw against the direct engine and the other proxies\n")
    print("\n".join(summary))
    if "json16-c16" in results:
        print()
        print("\n".join(goals(results["json16-c16"])))
    return 1 if failed else 0


def _print_setup(fleet: Fleet) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"llmgw overhead benchmark, {stamp}, llmgw {revision()}, "
          f"python {sys.version.split()[0]}, aiohttp {aiohttp.__version__}, "
          f"{os.cpu_count()} CPUs, {fleet.layout.describe()}")
    for name, target in fleet.targets.items():
        argv = [str(a) for a in target.process.args]  # type: ignore[union-attr]
        command = " ".join(Path(a).name if a.startswith("/") else a
                           for a in argv[argv.index(sys.executable) + 1:])
        print(f"  {name:16s} {target.url}  pid {target.process.pid}  {command}")
    for name, why in fleet.unavailable.items():
        print(f"  {name:16s} n/a: {why}")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
