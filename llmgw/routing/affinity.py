"""What the prefix scorers share: turning matched prefix depths into scores, and keeping
each request's prediction until the engine reports what it really had cached."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from llmgw.types import ReplicaView

# Requests that fail or are never routed leave entries behind: every table is bounded.
# Keys are the gateway's request ids (fixed size) and values hold one number per
# candidate replica, so a table is bounded in bytes by this times the replica count
# (measured: ~0.9 KB an entry with 4 replicas, ~4 MB in all).
PENDING_LIMIT = 4096


def matched_depths(hashes: Sequence[int], holders: Mapping[int, set[str]],
                   replica_ids: Iterable[str]) -> dict[str, int]:
    """Replica id -> how many leading blocks of ``hashes`` it holds, unbroken. One walk
    for all replicas; on a prefix every candidate holds, nobody drops out and the step
    is one subset test."""
    alive = set(replica_ids)
    depths = dict.fromkeys(alive, 0)
    for depth, block in enumerate(hashes):
        held = holders.get(block)
        if held is not None and alive <= held:
            continue
        survivors = alive & held if held else set()
        for rid in alive - survivors:
            depths[rid] = depth
        alive = survivors
        if not alive:
            return depths
    for rid in alive:
        depths[rid] = len(hashes)
    return depths


def beyond_common_prefix(depths: Mapping[str, int], total: int) -> dict[str, float]:
    """Replica id -> the share of the prompt's ``total`` blocks it holds beyond the prefix
    that every candidate holds. A system prompt cached fleet-wide separates nothing; the
    rest of the prompt does."""
    floor = min(depths.values(), default=0)
    rest = total - floor
    return {rid: (depth - floor) / rest if rest else 1.0 for rid, depth in depths.items()}


def bounded_put(entries: OrderedDict[str, Any], key: str, value: Any,
                limit: int = PENDING_LIMIT) -> None:
    entries[key] = value
    if len(entries) > limit:
        entries.popitem(last=False)


class CachedShares(Mapping[str, float]):
    """Replica id -> predicted cached share of the prompt, ``min(depth, cap) * scale``,
    computed on lookup: per request only the chosen replica's is read (all of them only
    when a decision is explained), so 64 candidates need not be converted up front."""

    __slots__ = ("_depths", "_cap", "_scale")

    def __init__(self, depths: Mapping[str, int], cap: int, scale: float) -> None:
        self._depths, self._cap, self._scale = depths, cap, scale

    def __getitem__(self, replica_id: str) -> float:
        return min(self._depths[replica_id], self._cap) * self._scale

    def __iter__(self) -> Iterator[str]:
        return iter(self._depths)

    def __len__(self) -> int:
        return len(self._depths)


class PredictionLedger:
    """Per request: the predicted cached share for every candidate (at scoring), then the
    chosen replica's (at routing), handed out once for calibration."""

    def __init__(self) -> None:
        self._offered: OrderedDict[str, Mapping[str, float]] = OrderedDict()
        self._predicted: OrderedDict[str, float] = OrderedDict()

    def offer(self, request_id: str, shares: Mapping[str, float]) -> None:
        bounded_put(self._offered, request_id, shares)

    def routed(self, request_id: str, replica_id: str) -> None:
        shares = self._offered.pop(request_id, None)
        if shares is not None:
            bounded_put(self._predicted, request_id, shares.get(replica_id, 0.0))

    def offered(self, request_id: str) -> Mapping[str, float] | None:
        return self._offered.get(request_id)

    def take(self, request_id: str) -> float | None:
        return self._predicted.pop(request_id, None)


class CapacityWatch:
    """Reports each replica's engine KV size (tokens) when it is first seen or changes,
    so an index can follow what the engine can really hold."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}

    def known(self) -> dict[str, int]:
        return dict(self._known)

    def forget(self, replica_id: str) -> None:
        self._known.pop(replica_id, None)

    def changed(self, replicas: Sequence[ReplicaView]) -> list[tuple[str, int]]:
        changes = []
        for r in replicas:
            tokens = r.kv_capacity_tokens
            if tokens is not None and self._known.get(r.id) != tokens:
                self._known[r.id] = tokens
                changes.append((r.id, tokens))
        return changes
