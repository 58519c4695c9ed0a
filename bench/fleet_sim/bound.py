"""An upper bound on the hit rate any router can reach on a recorded trace (issue 15,
point 2), computed offline from the requests in the order they were sent and their
replies. The argument is in the README ("The hit-rate bound").

A request's hit is counted block by block (which can only be more than the sims' leading
run of blocks). A block can hit only where it was produced before: the first lookup of
a block no earlier request produced misses everywhere. Under a load limit L (no replica
gets more than L x the mean request count) the n lookups of a block spread over at least
ceil(n / (L x N / R)) replicas, and each replica's first touch of the block misses unless
a request there produced it without looking it up. Cache capacity is not used: the bound
holds for caches of any size (so it is loose where caches are tight).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from bench.fleet_sim.tokens import block_hashes, token_count

NEVER = math.inf
# The matrix bar's balance (matrix.MAX_LOAD_IMBALANCE), here on request counts.
LOAD_LIMIT = 1.2


@dataclass(frozen=True)
class Sent:
    """One request of a trace: its rendered prompt and the reply it got."""

    prompt: str
    reply: str
    adapter: str | None = None  # its blocks are salted by the adapter, as the sims' are


@dataclass(frozen=True)
class Bound:
    """Upper bounds on cached / prompt tokens over a trace: ``any_load`` for every router,
    ``loaded`` for routers within the load limit (never above ``any_load``)."""

    any_load: float
    loaded: float


class Trace:
    """Each request's lookups (the blocks that can hit: full blocks within its first n-1
    tokens, as the sims count) and productions (what the sims cache after it: its prompt
    blocks, then its prompt + reply blocks)."""

    def __init__(self, sent: Sequence[Sent], block_tokens: int) -> None:
        self.block_tokens = block_tokens
        self.lookups: list[list[bytes]] = []
        self.produced: list[set[bytes]] = []
        self.prompt_tokens = 0
        for request in sent:
            n = token_count(request.prompt)
            self.prompt_tokens += n
            prompt_blocks = block_hashes(request.prompt, block_tokens, adapter=request.adapter)
            self.lookups.append(prompt_blocks[: max(0, n - 1) // block_tokens])
            self.produced.append({*prompt_blocks, *block_hashes(
                request.prompt + request.reply, block_tokens, adapter=request.adapter)})
        self.when_looked_up: dict[bytes, list[int]] = defaultdict(list)
        for i, blocks in enumerate(self.lookups):
            for block in blocks:
                self.when_looked_up[block].append(i)


def bound_hits(trace: Trace, replicas: int, load_limit: float) -> int:
    """Block hits possible when no replica gets more than ``load_limit`` x the mean
    request count (``math.inf``: no limit): each block's lookups minus the misses that
    its first appearance and its spreading force."""
    per_replica = (
        max(1, math.floor(load_limit * len(trace.lookups) / replicas))
        if math.isfinite(load_limit)
        else len(trace.lookups)
    )
    producers_only: dict[bytes, int] = defaultdict(int)
    first_produced: dict[bytes, int] = {}
    for i, (lookups, produced) in enumerate(zip(trace.lookups, trace.produced, strict=True)):
        for block in produced.difference(lookups):
            producers_only[block] += 1
        for block in produced:
            first_produced.setdefault(block, i)
    hits = 0
    for block, times in trace.when_looked_up.items():
        never_made_before = first_produced.get(block, NEVER) >= times[0]
        forced = math.ceil(len(times) / per_replica) - producers_only[block]
        hits += len(times) - max(int(never_made_before), forced)
    return hits


def hit_bound(sent: Sequence[Sent], block_tokens: int, replicas: int, load_limit: float) -> Bound:
    """Both bounds as shares of the trace's prompt tokens."""
    trace = Trace(sent, block_tokens)
    if not trace.prompt_tokens:
        return Bound(0.0, 0.0)
    scale = block_tokens / trace.prompt_tokens
    return Bound(
        bound_hits(trace, replicas, math.inf) * scale,
        bound_hits(trace, replicas, load_limit) * scale,
    )
