"""What ``bench/workers.py`` measured and how it prints it: the gateways, one record per
measured round, the per-round table (with why a round is not valid), the table over the
valid rounds, and the throughput ratios against one worker."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from loadgen import RoundResult
from processes import Proc
from report import percentile

CLIENT_LIMIT, IDLE_FLOOR = 0.85, 0.15  # CPUs: beyond these a round says little (see problem)


@dataclass
class Gateway:
    """One ``llmgw up`` and the processes that serve its requests (with one worker, the
    gateway itself; with more, the supervisor's worker children)."""

    workers: int
    proc: Proc
    serving: list[psutil.Process] = field(default_factory=list)
    groups: list[Path] = field(default_factory=list)  # the workers' cgroups, when capped
    cap: float = 0.0  # each worker's CPUs under its cgroup; 0: no cap

    @property
    def name(self) -> str:
        return self.proc.name


@dataclass
class Round:
    """One measured phase on one gateway; CPU in seconds over ``result.elapsed``."""

    gateway: Gateway
    result: RoundResult
    workers_s: float
    supervisor_s: float
    client_s: float
    engine_s: float
    busy_s: float
    throttled: float  # share of the workers' CFS periods that ran out of quota; nan: no cap

    def cores(self, seconds: float) -> float:
        return seconds / self.result.elapsed

    def rps(self) -> float:
        return self.result.ok / self.result.elapsed

    def share_of_cap(self) -> float:
        """The workers' CPU use over what their caps allow (nan: not capped)."""
        allowed = self.gateway.cap * self.gateway.workers
        return self.cores(self.workers_s) / allowed if allowed else float("nan")

    def idle(self) -> float:
        """CPUs the machine left idle during the round."""
        return (os.cpu_count() or 1) - self.cores(self.busy_s)

    def problem(self) -> str:
        """Why the round does not measure what the workers can do, or "": the load
        generator could not send more, or the machine had no CPU to spare, so that the
        workers (and the load generator) waited for one besides waiting for their caps."""
        if self.result.errors:
            return "errors"
        if self.cores(self.client_s) > CLIENT_LIMIT:
            return "load generator saturated"
        return "no idle CPU" if self.idle() < IDLE_FLOOR else ""


def _num(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def print_rounds(rounds: list[Round], per_round: int) -> None:
    print(
        "\n| round | target | req/s | workers' CPUs (share of cap) | throttled periods % "
        "| load generator CPUs | engine CPUs | idle CPUs | valid |\n|---|---|---|---|---|---|"
        "---|---|---|"
    )
    for i, r in enumerate(rounds):
        share = r.share_of_cap()
        print(
            f"| {i // per_round + 1} | {r.gateway.name} | {r.rps():.0f} "
            f"| {r.cores(r.workers_s):.2f}{'' if share != share else f' ({100 * share:.0f}%)'} "
            f"| {_num(100 * r.throttled, 0)} | {r.cores(r.client_s):.2f} "
            f"| {r.cores(r.engine_s):.2f} | {r.idle():.2f} | {r.problem() or 'yes'} |"
        )


def _valid(gw: Gateway, rounds: list[Round]) -> list[Round]:
    """The gateway's valid rounds; all of its rounds when none is."""
    mine = [r for r in rounds if r.gateway is gw]
    return [r for r in mine if not r.problem()] or mine


def summarize(gateways: list[Gateway], rounds: list[Round]) -> dict[int, float]:
    """The table over the valid rounds of each gateway (all rounds when none is valid);
    returns the median req/s per worker count."""
    print(
        "\n| target | workers | req/s (median) | p50 ms | p99 ms | worker CPU ms/req "
        "| supervisor CPU ms/req | requests per worker | valid rounds |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    medians: dict[int, float] = {}
    for gw in gateways:
        valid = _valid(gw, rounds)
        ok = sum(r.result.ok for r in valid) or 1
        latencies = [x for r in valid for x in r.result.latencies]
        tally = sum((r.result.tally for r in valid), start=Counter[str]())
        split = (
            " / ".join(str(tally[str(i)]) for i in range(gw.workers))
            if gw.workers > 1
            else str(sum(tally.values()))
        )
        medians[gw.workers] = statistics.median(r.rps() for r in valid)
        good = sum(not r.problem() for r in valid)
        print(
            f"| {gw.name} | {gw.workers} | {medians[gw.workers]:.0f} "
            f"| {1000 * percentile(latencies, 0.5):.2f} | {1000 * percentile(latencies, 0.99):.2f}"
            f" | {1000 * sum(r.workers_s for r in valid) / ok:.3f} "
            f"| {max(0.0, 1000 * sum(r.supervisor_s for r in valid) / ok):.3f} | {split} "
            f"| {good} of {len(rounds) // len(gateways)} |"
        )
    return medians


def print_ratios(medians: dict[int, float], gateways: list[Gateway], rounds: list[Round]) -> None:
    def cpu_ms(gw: Gateway) -> float:
        valid = _valid(gw, rounds)
        return sum(r.workers_s + r.supervisor_s for r in valid) / sum(r.result.ok for r in valid)

    print()
    for gw in gateways[1:]:
        ratio = medians[gw.workers] / medians[1]
        verdict = (
            f" (goal >= 1.7x: {'met' if ratio >= 1.7 else 'NOT met'})" if gw.workers == 2 else ""
        )
        print(
            f"ratio  {gw.workers} workers / 1 worker, req/s: {ratio:.2f}x{verdict}; "
            f"CPU per request (workers + supervisor): {cpu_ms(gw) / cpu_ms(gateways[0]):.2f}x"
        )
