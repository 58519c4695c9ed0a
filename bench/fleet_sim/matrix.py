"""The tenants workload over a matrix of fleets, caches and arrivals (issue 15).

    python -m bench.fleet_sim.matrix [--quick] [--targets a,b,...] [--cells all|base|lora|1,2]

Each cell is a fleet size (4, 8, 16 replicas), a KV cache size (the workload's working
set 0.5x, 1x, 2x or 4x the fleet's KV: from ample to tight) and an arrival process
(steady, Poisson, bursty) at ``--rate-per-replica`` requests per second per replica. The
cells vary one axis at a time around a base cell (4 replicas, 2x, Poisson), so a row set
stays bounded on a small machine. The ``lora`` cell is the base cell with the LoRA mix
(``lora_mix.py``): each session under one of ``--adapters`` adapters, the sims holding
``--lora-slots`` per replica, llmgw's model configured with them (``lora:``). Each cell
starts its own sims, then replays the same seeded ``tenants`` workload (``tenants.py``)
through every target, cold caches each time (``run.run_one``). Prints a table per cell,
the matrix (hit rate, TTFT p99, load imbalance) and, for every llmgw target, whether it
met the default policy's bar against sglang-router's cache_aware at its defaults in each
cell (``verdict``); writes every row to ``bench/out/fleet_sim-matrix-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.fleet_sim import targets as tg
from bench.fleet_sim.arrivals import KINDS, schedule
from bench.fleet_sim.lora_mix import adapter_names, with_adapters
from bench.fleet_sim.replica import CostModel
from bench.fleet_sim.report import Row, markdown, of_bound, table
from bench.fleet_sim.run import Context, finish, run_one
from bench.fleet_sim.tenants import kv_blocks, tenants, working_set_tokens
from bench.processes import free_ports, wait_ready

TARGETS = ("llmgw/round-robin", "llmgw/default", "llmgw/prefix-aware", "llmgw/session-aware",
           "llmgw/sticky-prefix", "sglang-router/cache_aware", "oracle")
REFERENCE = "sglang-router/cache_aware"  # at its defaults
MAX_LOAD_IMBALANCE = 1.2


@dataclass(frozen=True)
class Cell:
    replicas: int
    kv_factor: float  # working set / the fleet's KV
    arrival: str
    lora: bool = False  # sessions under LoRA adapters (the LoRA mix)

    @property
    def label(self) -> str:
        return f"r{self.replicas} kv{self.kv_factor:g}x {self.arrival}" + \
            (" lora" if self.lora else "")


BASE = Cell(4, 2.0, "poisson")
CELLS = (BASE, Cell(8, 2.0, "poisson"), Cell(16, 2.0, "poisson"), Cell(4, 0.5, "poisson"),
         Cell(4, 1.0, "poisson"), Cell(4, 4.0, "poisson"), Cell(4, 2.0, "steady"),
         Cell(4, 2.0, "bursty"), Cell(4, 2.0, "poisson", lora=True))
LORA = CELLS[-1]


def verdict(row: Row, reference: Row | None) -> str:
    """``met``, or the criteria missed, of the default policy's bar: hit rate >= the
    reference's, TTFT p99 <= its, max/mean load <= :data:`MAX_LOAD_IMBALANCE`."""
    if row.reason or reference is None or reference.reason:
        return "n/a"
    missed = []
    if row.hit_rate < reference.hit_rate:
        missed.append(f"hit {row.hit_rate:.1%} < {reference.hit_rate:.1%}")
    if row.ttft_p99_ms > reference.ttft_p99_ms:
        missed.append(f"p99 {row.ttft_p99_ms:.0f} > {reference.ttft_p99_ms:.0f} ms")
    if row.load_imbalance > MAX_LOAD_IMBALANCE:
        missed.append(f"load {row.load_imbalance:.2f}")
    return "; ".join(missed) or "met"


def matrix_tables(rows: list[Row]) -> tuple[str, str]:
    """Targets down, cells across: hit % / TTFT p99 / load imbalance; then each llmgw
    target's :func:`verdict` against :data:`REFERENCE` per cell."""
    cells = list(dict.fromkeys(r.workload for r in rows))
    names = list(dict.fromkeys(r.target for r in rows))
    by_key = {(r.target, r.workload): r for r in rows}
    values, verdicts = [], []
    for name in names:
        line, judged = [name], [name]
        for cell in cells:
            row = by_key.get((name, cell))
            line.append("-" if row is None else "n/a" if row.reason else
                        f"{row.hit_rate * 100:.1f}% / {row.ttft_p99_ms:.0f} / "
                        f"{row.load_imbalance:.2f} / {of_bound(row) * 100:.0f}%")
            judged.append("-" if row is None else verdict(row, by_key.get((REFERENCE, cell))))
        values.append(line)
        if name.startswith("llmgw/"):
            verdicts.append(judged)
    return (markdown(["target (hit % / TTFT p99 ms / load imb. / % of bound)", *cells], values),
            markdown([f"llmgw target vs {REFERENCE}", *cells], verdicts))


async def run_cell(cell: Cell, args: argparse.Namespace, names: list[str], logs: Path) -> list[Row]:
    workload = tenants(args.per_replica * cell.replicas, args.seed, args.tenants)
    if cell.lora:
        workload = with_adapters(workload, args.adapters, args.seed)
    blocks = kv_blocks(workload, cell.kv_factor, cell.replicas, args.block_tokens)
    offsets = schedule(cell.arrival, workload.requests, args.rate_per_replica * cell.replicas,
                       args.seed)
    print(f"\n## {cell.label}: {workload.requests} requests in {len(workload.sessions)} "
          f"sessions, working set {working_set_tokens(workload)} tokens, {blocks} blocks of "
          f"{args.block_tokens} per replica, {args.rate_per_replica * cell.replicas:g} req/s",
          flush=True)
    ports = free_ports(cell.replicas)
    flags = [f"--kv-blocks={blocks}", f"--block-tokens={args.block_tokens}",
             f"--decode-ms-per-token={args.decode_ms_per_token}",
             f"--max-loras={args.lora_slots}", f"--lora-load-ms={args.lora_load_ms}"]
    sims = tg.start_sims(logs, ports, flags)
    lora = tg.lora_config(adapter_names(args.adapters), args.lora_slots) if cell.lora else None
    ctx = Context(logs, sims, {f"sim-{p}": f"http://127.0.0.1:{p}" for p in ports}, args.seed,
                  args.block_tokens, lora)
    # run_one's closed-loop settings; with arrivals only ``active`` and the limit count.
    replay_args = argparse.Namespace(concurrency=1, active=args.sessions_per_replica
                                     * cell.replicas, time_limit=args.time_limit)
    rows = []
    try:
        await wait_ready(sims, "/health", 30)
        for name in names:
            started = time.monotonic()
            row = await run_one(name, workload, ctx, replay_args, arrivals=offsets)
            row.workload = cell.label
            print(f"  {row.label}: {time.monotonic() - started:.1f}s "
                  f"{row.reason or f'{row.ok} ok, {row.errors} errors'}", flush=True)
            rows.append(row)
    finally:
        sims.stop()
    print("\n" + table(rows), flush=True)
    return rows


def chosen_cells(spec: str) -> tuple[Cell, ...]:
    """``all``, ``base``, ``lora``, or comma-separated positions in :data:`CELLS`."""
    if spec in ("all", "base", "lora"):
        return {"all": CELLS, "base": (BASE,), "lora": (LORA,)}[spec]
    try:
        return tuple(CELLS[int(part)] for part in spec.split(","))
    except (ValueError, IndexError):
        known = f"all, base, lora, or positions 0-{len(CELLS) - 1}"
        raise SystemExit(f"--cells: {known}, not {spec!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="the tenants workload over fleets, caches, arrivals")
    p.add_argument("--cells", default="all",
                   help="all, base, lora, or positions in the list of cells from 0 (base), "
                        "e.g. 1,2")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--per-replica", type=int, default=32, help="requests per replica")
    p.add_argument("--sessions-per-replica", type=int, default=12,
                   help="sessions open at once per replica")
    p.add_argument("--rate-per-replica", type=float, default=4.0, help="requests/s")
    p.add_argument("--tenants", type=int, default=4)
    p.add_argument("--adapters", type=int, default=8, help="LoRA adapters (lora cell), Zipf")
    p.add_argument("--lora-slots", type=int, default=2, help="adapters resident per replica")
    p.add_argument("--lora-load-ms", type=float, default=CostModel().lora_load_ms)
    p.add_argument("--decode-ms-per-token", type=float, default=CostModel().decode_ms_per_token)
    p.add_argument("--block-tokens", type=int, default=CostModel().block_tokens)
    p.add_argument("--time-limit", type=float, default=90.0, help="seconds per replay")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: the base cell (unless --cells names others), 8 requests "
                        "per replica, 2 ms decode steps")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.per_replica, args.decode_ms_per_token = 8, 2.0
        args.cells = "base" if args.cells == "all" else args.cells
        args.time_limit = min(args.time_limit, 30.0)
    return args


async def main_async(args: argparse.Namespace) -> list[Row]:
    names = [t.strip() for t in args.targets.split(",") if t.strip()]
    logs = Path(tempfile.mkdtemp(prefix="fleet-matrix-"))
    rows: list[Row] = []
    for cell in chosen_cells(args.cells):
        assert cell.arrival in KINDS
        rows += await run_cell(cell, args, names, logs)
    values, verdicts = matrix_tables(rows)
    print(f"\n## Matrix\n\n{values}\n\n{verdicts}\n\nprocess logs: {logs}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    return finish(args, asyncio.run(main_async(args)), started, "fleet_sim-matrix")


if __name__ == "__main__":
    raise SystemExit(main())
