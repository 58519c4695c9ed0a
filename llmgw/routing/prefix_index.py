"""Which prompt prefixes the gateway sent to which replica: chained block hashes over the
prompt text, per replica, bounded in entries and age.

Text, not tokens: hashing characters needs no tokenizer on the hot path. A block is
``block_chars`` characters; block i's hash covers blocks 0..i (it chains its parent's
hash), so one set lookup per block answers "is this whole prefix there?", as vLLM's
prefix cache does with token blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


def block_hashes(text: str, block_chars: int, max_blocks: int) -> list[int]:
    """Hashes of the first ``max_blocks`` full blocks of ``text``, each chained to its
    parent. Python's str hash is salted per process, which is fine: the index lives in
    one process."""
    hashes: list[int] = []
    parent = 0
    end = min(len(text) // block_chars, max_blocks) * block_chars
    for start in range(0, end, block_chars):
        parent = hash((parent, text[start : start + block_chars]))
        hashes.append(parent)
    return hashes


class ReplicaPrefixes:
    """One replica's remembered blocks: an LRU of block hash -> last use, capped at
    ``capacity`` entries and dropping entries older than ``ttl_s``."""

    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float]) -> None:
        self.capacity, self.ttl_s, self.clock = capacity, ttl_s, clock
        self._blocks: OrderedDict[int, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matched(self, hashes: list[int]) -> int:
        """How many leading blocks of ``hashes`` are remembered and fresh."""
        oldest = self.clock() - self.ttl_s
        count = 0
        for h in hashes:
            seen = self._blocks.get(h)
            if seen is None or seen < oldest:
                break
            count += 1
        return count

    def insert(self, hashes: list[int]) -> None:
        now = self.clock()
        for h in hashes:
            self._blocks[h] = now
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)
        self._expire(now)

    def _expire(self, now: float) -> None:
        oldest = now - self.ttl_s
        while self._blocks:
            first = next(iter(self._blocks.values()))
            if first >= oldest:
                break
            self._blocks.popitem(last=False)


class PrefixIndex:
    """Per-replica prefix memory. Replicas that disappear are forgotten on ``retain``."""

    def __init__(self, capacity_per_replica: int, ttl_s: float,
                 clock: Callable[[], float]) -> None:
        self._capacity, self._ttl, self._clock = capacity_per_replica, ttl_s, clock
        self._replicas: dict[str, ReplicaPrefixes] = {}

    def matched(self, replica_id: str, hashes: list[int]) -> int:
        prefixes = self._replicas.get(replica_id)
        return prefixes.matched(hashes) if prefixes is not None else 0

    def insert(self, replica_id: str, hashes: list[int]) -> None:
        prefixes = self._replicas.get(replica_id)
        if prefixes is None:
            prefixes = self._replicas[replica_id] = ReplicaPrefixes(
                self._capacity, self._ttl, self._clock)
        prefixes.insert(hashes)

    def size(self, replica_id: str) -> int:
        prefixes = self._replicas.get(replica_id)
        return len(prefixes) if prefixes is not None else 0

    def retain(self, replica_ids: set[str]) -> None:
        for gone in set(self._replicas) - replica_ids:
            del self._replicas[gone]
