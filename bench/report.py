"""Pooling rounds per target and printing them: one Markdown table per scenario, the
added latency of each proxy against the direct engine, and CPU-per-request ratios."""

from __future__ import annotations

import contextlib
import math
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loadgen import RoundResult

DIRECT, LLMGW, BASELINE, SGLANG = "direct", "llmgw", "baseline", "sglang-router"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured round on one target, with the CPU seconds spent meanwhile by the
    proxy (the engine for the direct row), the engine, and processes not ours."""

    result: RoundResult
    cpu_s: float
    engine_cpu_s: float
    foreign_cpu_s: float

    def foreign_load(self) -> float:
        """Mean CPUs used by processes not ours during the round."""
        return self.foreign_cpu_s / self.result.elapsed if self.result.elapsed else 0.0


@dataclass
class Pooled:
    """All measured rounds of one target in one scenario. Times in seconds."""

    name: str
    latencies: list[float] = field(default_factory=list)
    first_bytes: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu_s: float = 0.0  # the proxy's (the engine's for the direct row)
    engine_cpu_s: float = 0.0
    foreign_cpu_s: float = 0.0
    remeasured: int = 0  # rounds measured again because the machine was busy
    unavailable: str = ""  # why there is no number, for the table
    error_sample: str = ""

    def add(self, sample: Sample) -> None:
        result = sample.result
        self.latencies += result.latencies
        self.first_bytes += result.first_bytes
        self.errors += result.errors
        self.elapsed += result.elapsed
        self.cpu_s += sample.cpu_s
        self.engine_cpu_s += sample.engine_cpu_s
        self.foreign_cpu_s += sample.foreign_cpu_s
        self.error_sample = self.error_sample or result.error_sample

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else math.nan

    def ms(self, values: Sequence[float], q: float) -> float:
        return percentile(values, q) * 1000

    def cpu_ms(self) -> float:
        return self.cpu_s * 1000 / self.ok if self.ok else math.nan

    def engine_cpu_ms(self) -> float:
        return self.engine_cpu_s * 1000 / self.ok if self.ok else math.nan


def _num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


_HEAD = ("| target | req/s | p50 ms | p99 ms | TTFB p50 ms | TTFB p99 ms "
         "| proxy CPU ms/req | engine CPU ms/req | ok | errors |")


def table(rows: Sequence[Pooled]) -> list[str]:
    lines = [_HEAD, "|" + "---|" * _HEAD.count(" |")]
    for row in rows:
        if row.unavailable:
            lines.append(f"| {row.name} | n/a: {row.unavailable} |" + " |" * 8)
            continue
        lines.append(
            f"| {row.name} | {_num(row.rps(), 0)} | {_num(row.ms(row.latencies, .5))} "
            f"| {_num(row.ms(row.latencies, .99))} | {_num(row.ms(row.first_bytes, .5))} "
            f"| {_num(row.ms(row.first_bytes, .99))} | {_num(row.cpu_ms(), 3)} "
            f"| {_num(row.engine_cpu_ms(), 3)} | {row.ok} | {row.errors} |")
    return lines


def added_latency(rows: dict[str, Pooled], name: str) -> tuple[float, float]:
    """(p50, p99) of ``name`` minus the direct engine's, in ms; NaN when unknown."""
    direct, row = rows.get(DIRECT), rows.get(name)
    if not direct or not row or not direct.ok or not row.ok:
        return math.nan, math.nan
    return (row.ms(row.latencies, .5) - direct.ms(direct.latencies, .5),
            row.ms(row.latencies, .99) - direct.ms(direct.latencies, .99))


def cpu_ratio(rows: dict[str, Pooled], num: str, den: str) -> float:
    a, b = rows.get(num), rows.get(den)
    if not a or not b or not a.ok or not b.ok or not b.cpu_s:
        return math.nan
    return a.cpu_ms() / b.cpu_ms()


def background_load(rows: dict[str, Pooled]) -> float:
    """Mean CPUs used by processes other than the benchmark's while it measured."""
    elapsed = sum(r.elapsed for r in rows.values())
    return sum(r.foreign_cpu_s for r in rows.values()) / elapsed if elapsed else math.nan


def ratios(rows: dict[str, Pooled]) -> list[str]:
    added = []
    for name in (n for n in rows if n != DIRECT):
        p50, p99 = added_latency(rows, name)
        added.append(f"{name} {_signed(p50)} / {_signed(p99)}")
    return [
        "added latency vs direct, p50 / p99 ms: " + "; ".join(added),
        f"CPU per request: llmgw/baseline = {_num(cpu_ratio(rows, LLMGW, BASELINE))}x; "
        f"llmgw/sglang-router = {_num(cpu_ratio(rows, LLMGW, SGLANG))}x",
        f"background load from other processes while measuring: "
        f"{_num(background_load(rows))} CPUs; rounds re-measured for it: "
        f"{sum(r.remeasured for r in rows.values())}",
    ]


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.2f}"


def summary_row(scenario: str, rows: dict[str, Pooled]) -> str:
    """One line of the closing table: llmgw against the others in this scenario."""
    p50, p99 = added_latency(rows, LLMGW)
    b50, b99 = added_latency(rows, BASELINE)
    s50, s99 = added_latency(rows, SGLANG)
    cpu = {name: rows[name].cpu_ms() if name in rows else math.nan
           for name in (LLMGW, BASELINE, SGLANG)}
    return (f"| {scenario} | {_signed(p50)} / {_signed(p99)} | {_signed(b50)} / {_signed(b99)} "
            f"| {_signed(s50)} / {_signed(s99)} | {_num(cpu[LLMGW], 3)} "
            f"| {_num(cpu[BASELINE], 3)} | {_num(cpu[SGLANG], 3)} "
            f"| {_num(cpu_ratio(rows, LLMGW, BASELINE))} "
            f"| {_num(cpu_ratio(rows, LLMGW, SGLANG))} | {_num(background_load(rows))} |")


SUMMARY_HEAD = [
    "| scenario | llmgw added p50/p99 ms | baseline added p50/p99 ms "
    "| sglang-router added p50/p99 ms | llmgw CPU ms/req | baseline CPU ms/req "
    "| sglang-router CPU ms/req | llmgw/baseline CPU | llmgw/sglang-router CPU "
    "| other load (CPUs) |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def goals(rows: dict[str, Pooled]) -> list[str]:
    """The two targets llmgw set itself, checked on the json16-c16 scenario."""
    p50, p99 = added_latency(rows, LLMGW)
    ratio = cpu_ratio(rows, LLMGW, BASELINE)
    return [
        f"goal  llmgw adds < 2 ms p50 and < 10 ms p99 (json16-c16): "
        f"{_signed(p50)} / {_signed(p99)} ms -> {_verdict(p50 < 2 and p99 < 10, p99)}",
        f"goal  llmgw CPU/request <= 1/3 of baseline (json16-c16): {_num(ratio)}x -> "
        f"{_verdict(ratio <= 1 / 3, ratio)}",
    ]


def _verdict(met: bool, value: float) -> str:
    return "n/a" if math.isnan(value) else ("met" if met else "NOT met")


def revision() -> str:
    """The llmgw tree measured: commit, and whether files differ from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True, timeout=10, check=False)
        return done.stdout.strip()

    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "llmgw")
        return git("rev-parse", "--short", "HEAD") + (" + local changes" if dirty else "")
    return "unknown"
