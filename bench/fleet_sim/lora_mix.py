"""The LoRA mix: the tenants workload with every session under one of a few adapters.

Each session names one adapter as its ``model`` for all its turns; adapters are picked
with Zipf popularity (weight 1 / rank^s), so a few are hot and the rest share the tail.
The sims keep ``max_loras`` adapters per replica (LRU, a load costs TTFT) and salt KV
blocks by adapter, so a router that scatters an adapter's sessions pays in loads and in
misses on the tenants' system prompts, which are cached per adapter.
"""

from __future__ import annotations

import dataclasses
import random

from bench.fleet_sim.workloads import Workload


def adapter_names(count: int) -> list[str]:
    return [f"sim-lora-{i}" for i in range(count)]


def with_adapters(workload: Workload, adapters: int, seed: int, zipf: float = 1.1) -> Workload:
    """``workload`` with each session's ``adapter`` drawn from ``adapters`` names, Zipf;
    seeded apart from the workload's own draws, so its sessions stay the same."""
    rng = random.Random(f"lora-{seed}")
    names = adapter_names(adapters)
    weights = [1 / (rank + 1) ** zipf for rank in range(adapters)]
    sessions = tuple(
        dataclasses.replace(s, adapter=rng.choices(names, weights=weights)[0])
        for s in workload.sessions
    )
    return Workload(f"{workload.name}-lora", sessions)
