"""The benchmark's running targets and how one round on one of them is measured.

A :class:`Fleet` owns the processes (stopped through its ExitStack, proxies before the
engine). :func:`measure` runs one round on fresh connections and charges CPU to the
proxy, the engine, and processes that are not the benchmark's (a shared machine's noise).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadgen import Workload, new_session, run_round
from processes import Proc, StartError, machine_busy_s, own_cpu_s, wait_ready
from report import DIRECT, Sample
from targets import (
    READY_PATHS,
    Layout,
    start_baseline,
    start_engine,
    start_llmgw,
    start_sglang_router,
)

REQUEST_TIMEOUT_S = 60.0
Starter = Callable[[Path, str, int | None], Proc]
STARTERS: dict[str, Starter] = {
    "llmgw": start_llmgw, "baseline": start_baseline, "sglang-router": start_sglang_router,
    # A what-if: llmgw with gc.freeze() after its imports (bench/gc_probe.py --freeze).
    "llmgw-gc-freeze": functools.partial(start_llmgw, freeze=True, name="llmgw-gc-freeze"),
    # llmgw with every request traced (telemetry.tracing, sample_ratio 1).
    "llmgw-traced": functools.partial(start_llmgw, tracing=True, name="llmgw-traced"),
    # llmgw with server.workers: 2 (two processes on one port, one supervisor).
    "llmgw-2w": functools.partial(start_llmgw, workers=2, name="llmgw-2w"),
    # sglang-router with its default policy (cache_aware) instead of round_robin.
    "sglang-router-ca": functools.partial(start_sglang_router, policy="cache_aware",
                                          name="sglang-router-ca"),
}


class Fleet:
    """The running targets (direct engine first) and why the missing ones are missing."""

    def __init__(self, stack: contextlib.ExitStack, logs: Path, layout: Layout,
                 starters: dict[str, Starter]) -> None:
        self.stack, self.logs, self.layout, self.starters = stack, logs, layout, starters
        self.targets: dict[str, Proc] = {}
        self.unavailable: dict[str, str] = {}

    @property
    def engine(self) -> Proc:
        return self.targets[DIRECT]

    def _spawn(self, name: str, start: Callable[[], Proc]) -> Proc | None:
        try:
            target = start()
        except StartError as exc:
            self.unavailable[name] = str(exc)
            return None
        self.stack.callback(target.stop)
        return target

    async def start(self, names: Sequence[str], token_delay_ms: float) -> None:
        cpu = self.layout.proxy
        engine = self._spawn(DIRECT, lambda: start_engine(self.logs, token_delay_ms,
                                                          self.layout.engine))
        assert engine is not None
        await ready(engine)
        spawned: list[Proc] = []
        for name in (n for n in names if n != DIRECT):
            start = functools.partial(self.starters[name], self.logs, engine.url, cpu)
            target = self._spawn(name, start)
            if target is not None:
                spawned.append(target)
        outcomes = await asyncio.gather(*(ready(t) for t in spawned), return_exceptions=True)
        self.targets[DIRECT] = engine
        for target, outcome in zip(spawned, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self.unavailable[target.name] = str(outcome) or repr(outcome)
                target.stop()
            else:
                self.targets[target.name] = target


async def ready(target: Proc) -> None:
    """Up, and answers one stream and one non-stream request correctly."""
    await wait_ready(target, READY_PATHS[target.name], timeout_s=60)
    for stream in (False, True):
        probe = Workload(stream=stream, max_tokens=4, concurrency=1)
        async with new_session(probe, 10) as session:
            result = await run_round(session, url(target), probe, 1, 10)
        if result.errors:
            raise StartError(f"probe request failed: {result.error_sample}")


def url(target: Proc) -> str:
    return target.url + "/v1/chat/completions"


async def measure(target: Proc, fleet: Fleet, w: Workload, requests: int,
                  time_limit_s: float) -> Sample:
    """One round on one target: fresh connections, a warm-up, then the measured phase.
    The direct row's proxy is the engine itself."""
    async with new_session(w, REQUEST_TIMEOUT_S) as session:
        await run_round(session, url(target), w, w.concurrency * 2, time_limit_s)
        before = _cpu(target, fleet)
        result = await run_round(session, url(target), w, requests, time_limit_s)
        after = _cpu(target, fleet)
    proxy, engine, ours, busy = (b - a for a, b in zip(before, after, strict=True))
    return Sample(result, proxy, engine, max(0.0, busy - ours))


def _cpu(target: Proc, fleet: Fleet) -> tuple[float, float, float, float]:
    """CPU seconds so far: (target, engine, all our processes, the whole machine)."""
    ours = sum(t.cpu_s() for t in fleet.targets.values()) + own_cpu_s()
    return target.cpu_s(), fleet.engine.cpu_s(), ours, machine_busy_s()


@dataclass(frozen=True)
class Noise:
    """Re-measure a round when processes not ours used more than ``threshold`` CPUs
    during it (a shared machine), at most ``retries`` times; the quietest round is kept."""

    threshold: float = 0.25
    retries: int = 2


async def measure_quietly(target: Proc, fleet: Fleet, w: Workload, requests: int,
                          time_limit_s: float, noise: Noise) -> tuple[Sample, int]:
    """The quietest of up to 1 + noise.retries rounds, and how many were re-measured."""
    best = await measure(target, fleet, w, requests, time_limit_s)
    tries = 0
    while tries < noise.retries and best.foreign_load() > noise.threshold:
        tries += 1
        again = await measure(target, fleet, w, requests, time_limit_s)
        best = min(best, again, key=Sample.foreign_load)
    return best, tries
