"""Turning one replay's results and the simulators' counters into a row, and rows into
tables. Pure functions over data; nothing here does I/O except :func:`write_json`."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fleet_sim.bound import LOAD_LIMIT, Sent, hit_bound
from bench.fleet_sim.loadgen import Result


@dataclass
class Row:
    """One target on one workload. ``reason`` is set (and the numbers empty) for n/a.

    ``hit_rate`` is cached / prompt tokens summed over the answered requests (the sims'
    true counts, from ``usage``). ``ttft`` is measured by the client (router included);
    ``engine_ttft`` is the sims' own queue + prefill-lane + prefill time. Imbalance is
    max/mean over replicas: ``load_imbalance`` of the time-averaged requests in each
    replica (running + queued, integrated by the sim), ``count_imbalance`` of request
    counts. ``instances`` is how many gateway processes of the target shared the fleet,
    ``workers`` its ``server.workers`` (llmgw only; 1 for every other target)."""

    target: str
    workload: str
    reason: str = ""
    instances: int = 1
    workers: int = 1
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0
    hit_rate: float = 0.0
    ttft_p50_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    engine_ttft_p50_ms: float = 0.0
    engine_ttft_p99_ms: float = 0.0
    latency_p50_ms: float = 0.0
    req_per_s: float = 0.0
    out_tok_per_s: float = 0.0
    load_imbalance: float = 0.0
    count_imbalance: float = 0.0
    evicted_blocks: int = 0
    adapter_loads: int = 0  # LoRA adapters loaded by the sims (on demand or when asked)
    # Upper bounds on hit_rate over this replay's own trace (bound.py): for any router,
    # and for routers whose count imbalance is within bound.LOAD_LIMIT.
    hit_bound_any: float = 0.0
    hit_bound_loaded: float = 0.0
    # CPUs (cores) used during the replay by the sims, the router, the client (with the
    # in-process oracle) and everything else on the machine.
    cpu: dict[str, float] = field(default_factory=dict)
    per_replica: dict[str, int] = field(default_factory=dict)
    error_sample: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The target, with `` x<N>`` for several gateway instances, `` w<N>`` for several
        workers."""
        return (self.target + (f" x{self.instances}" if self.instances > 1 else "")
                + (f" w{self.workers}" if self.workers > 1 else ""))


def loads_per_1k(row: Row) -> float:
    """LoRA adapter loads per 1000 answered requests."""
    return 1000 * row.adapter_loads / row.ok if row.ok else 0.0


def of_bound(row: Row) -> float:
    """The row's hit rate as a share of the bound that holds for it: the load-limited one
    when its count imbalance is within the limit, else the one for any load."""
    bound = row.hit_bound_loaded if row.count_imbalance <= LOAD_LIMIT else row.hit_bound_any
    return row.hit_rate / bound if bound else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def _imbalance(values: list[float]) -> float:
    mean = sum(values) / len(values) if values else 0.0
    return max(values) / mean if mean > 0 else 0.0


def summarize(target: str, workload: str, results: list[Result], wall_s: float,
              fleet: dict[str, dict[str, Any]], cpu: dict[str, float],
              instances: int = 1, workers: int = 1, block_tokens: int = 16) -> Row:
    good = [r for r in results if r.ok]
    trace = [Sent(r.prompt, r.content, r.adapter) for r in sorted(good, key=lambda r: r.sent)]
    bound = hit_bound(trace, block_tokens, max(1, len(fleet)), LOAD_LIMIT)
    prompt = sum(r.prompt_tokens for r in good)
    ttft = [r.ttft_ms for r in good]
    engine_ttft = [float(r.sim.get("ttft_ms", 0.0)) for r in good if r.sim]
    bad = [r for r in results if not r.ok]
    return Row(
        target, workload, ok=len(good), errors=len(bad), wall_s=wall_s, instances=instances,
        workers=workers,
        hit_rate=sum(r.cached_tokens for r in good) / prompt if prompt else 0.0,
        ttft_p50_ms=percentile(ttft, 50), ttft_p99_ms=percentile(ttft, 99),
        engine_ttft_p50_ms=percentile(engine_ttft, 50),
        engine_ttft_p99_ms=percentile(engine_ttft, 99),
        latency_p50_ms=percentile([r.latency_ms for r in good], 50),
        req_per_s=len(good) / wall_s if wall_s else 0.0,
        out_tok_per_s=sum(r.completion_tokens for r in good) / wall_s if wall_s else 0.0,
        load_imbalance=_imbalance([s["load_avg"] for s in fleet.values()]),
        count_imbalance=_imbalance([float(s["requests"]) for s in fleet.values()]),
        evicted_blocks=sum(int(s["evicted_blocks"]) for s in fleet.values()),
        adapter_loads=sum(int(s.get("adapter_loads", 0)) for s in fleet.values()),
        hit_bound_any=bound.any_load, hit_bound_loaded=bound.loaded,
        cpu=cpu,
        per_replica={name: int(s["requests"]) for name, s in sorted(fleet.items())},
        error_sample=bad[0].error if bad else "",
        requests=[{k: v for k, v in asdict(r).items() if k not in ("content", "prompt")}
                  for r in results],
    )


_COLUMNS = ("target", "hit %", "hit bound % (any / limited)", "% of bound",
            "TTFT p50/p99 ms", "engine TTFT p50/p99 ms", "req/s", "out tok/s", "load imb.",
            "count imb.", "adapter loads /1k req", "per-replica requests", "ok/err",
            "CPU sim/rtr/cli/other")


def _cells(row: Row) -> list[str]:
    if row.reason:
        return [row.label, f"n/a: {row.reason}", *[""] * (len(_COLUMNS) - 2)]
    return [row.label, f"{row.hit_rate * 100:.1f}",
            f"{row.hit_bound_any * 100:.1f} / {row.hit_bound_loaded * 100:.1f}",
            f"{of_bound(row) * 100:.0f}",
            f"{row.ttft_p50_ms:.0f} / {row.ttft_p99_ms:.0f}",
            f"{row.engine_ttft_p50_ms:.0f} / {row.engine_ttft_p99_ms:.0f}",
            f"{row.req_per_s:.1f}", f"{row.out_tok_per_s:.0f}",
            f"{row.load_imbalance:.2f}", f"{row.count_imbalance:.2f}",
            f"{loads_per_1k(row):.0f}",
            " ".join(str(n) for n in row.per_replica.values()), f"{row.ok}/{row.errors}",
            "/".join(f"{row.cpu.get(k, 0.0):.2f}" for k in ("sims", "router", "client", "other"))]


def markdown(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    return markdown(_COLUMNS, [_cells(r) for r in rows])


def summary(rows: list[Row]) -> str:
    """Targets down, workloads across: hit rate and TTFT p50 in each cell."""
    workloads = list(dict.fromkeys(r.workload for r in rows))
    targets = list(dict.fromkeys(r.label for r in rows))
    by_key = {(r.label, r.workload): r for r in rows}
    body = []
    for target in targets:
        cells = [target]
        for workload in workloads:
            row = by_key.get((target, workload))
            cells.append("-" if row is None else "n/a" if row.reason else
                         f"{row.hit_rate * 100:.0f}% / {row.ttft_p50_ms:.0f} ms")
        body.append(cells)
    return markdown(["target (hit % / TTFT p50)", *workloads], body)


# The instance comparison's columns: header, how a value shows, and the number whose ratio
# to the first count is shown beside it (None: no ratio; an imbalance is a ratio already).
_BY_INSTANCES: tuple[tuple[str, Callable[[Row], str], Callable[[Row], float] | None], ...] = (
    ("hit %", lambda r: f"{r.hit_rate * 100:.1f}", lambda r: r.hit_rate),
    ("TTFT p50 ms", lambda r: f"{r.ttft_p50_ms:.0f}", lambda r: r.ttft_p50_ms),
    ("TTFT p99 ms", lambda r: f"{r.ttft_p99_ms:.0f}", lambda r: r.ttft_p99_ms),
    ("engine TTFT p50 ms", lambda r: f"{r.engine_ttft_p50_ms:.0f}",
     lambda r: r.engine_ttft_p50_ms),
    ("load imb.", lambda r: f"{r.load_imbalance:.2f}", None),
    ("errors", lambda r: str(r.errors), None),
)


def _by_instances_cell(rows: list[Row | None], show: Callable[[Row], str],
                       ratio_of: Callable[[Row], float] | None) -> str:
    base = rows[0]
    base_value = ratio_of(base) if ratio_of and base is not None and not base.reason else 0.0
    parts = []
    for i, row in enumerate(rows):
        if row is None or row.reason:
            parts.append("n/a")
            continue
        text = show(row)
        if ratio_of is not None and i > 0 and base_value > 0:
            text += f" ({ratio_of(row) / base_value:.2f})"
        parts.append(text)
    return " / ".join(parts)


def instances_table(rows: list[Row], by: str = "instances") -> str:
    """Workloads and targets down; each cell holds a value for every instance count (or
    worker count: ``by="workers"``), in increasing order, with its ratio to the first
    count (normally 1) in brackets. Only the targets that ran with more than one count
    appear."""
    counts = sorted({getattr(r, by) for r in rows})
    by_key = {(r.workload, r.target, getattr(r, by)): r for r in rows}
    groups = [key for key in dict.fromkeys((r.workload, r.target) for r in rows)
              if sum((*key, n) in by_key for n in counts) > 1]
    shown = " / ".join(f"{'x' if by == 'instances' else 'w'}{n}" for n in counts)
    header = ["workload", "target", *(f"{name} ({shown})" for name, *_ in _BY_INSTANCES)]
    body = [[workload, target,
             *(_by_instances_cell([by_key.get((workload, target, n)) for n in counts],
                                  show, ratio_of)
               for _, show, ratio_of in _BY_INSTANCES)]
            for workload, target in groups]
    return markdown(header, body)


def write_json(path: Path, config: dict[str, Any], rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": config, "rows": [asdict(r) for r in rows]},
                               indent=1))
