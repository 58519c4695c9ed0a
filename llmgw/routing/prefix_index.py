"""Which prompt prefixes the gateway sent to which replica: chained block hashes over the
prompt text, bounded per replica in entries and age.

Text, not tokens: hashing characters needs no tokenizer on the hot path. A block is
``block_chars`` characters; block i's hash covers blocks 0..i (it chains its parent's
hash), as vLLM's prefix cache does with token blocks, so "block i is held" means "the
whole prefix up to i was sent there".

One map from block hash to the replicas holding it answers a lookup for all replicas at
once. Each replica also keeps its own LRU order of blocks, so eviction and the size bound
are per replica, like the engine's KV cache the index stands in for.

A prompt's blocks are refreshed tail first (as vLLM's free-block queue orders them), so a
block is never more recent than its parent and eviction takes a prefix's tail before its
head: what a replica holds is prefix-closed. A lookup therefore need not walk every
block: where a set of replicas stops matching is found by bisection, O(log n) probes per
drop-out instead of n (bench/routing_stages.py has the numbers).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence


def block_hashes(text: str, block_chars: int, max_blocks: int,
                 known: Sequence[int] = (), salt: int = 0) -> list[int]:
    """Hashes of the first ``max_blocks`` full blocks of ``text``, each chained to its
    parent, the first to ``salt``; ``known`` are those of its first blocks, already
    computed (a resent history). Python's str hash is salted per process, which is fine:
    the index lives in one process."""
    hashes = list(known[:max_blocks])
    parent = hashes[-1] if hashes else salt
    end = min(len(text) // block_chars, max_blocks) * block_chars
    for start in range(len(hashes) * block_chars, end, block_chars):
        parent = hash((parent, text[start : start + block_chars]))
        hashes.append(parent)
    return hashes


# Characters of hashed history kept for sessions, all together (a str of ASCII text
# costs about a byte a character): 16 MB.
HISTORY_CHARS = 1 << 24


class HistoryHashes:
    """Session key -> the hashed part of its last prompt and those hashes. A conversation
    resends its history every turn, so the next turn checks that it starts with that text
    (a memory compare) and hashes only what was added. Least recently used first out,
    bounded in characters held."""

    def __init__(self, max_chars: int = HISTORY_CHARS) -> None:
        self.max_chars = max_chars
        self._entries: OrderedDict[str, tuple[str, list[int]]] = OrderedDict()
        self._chars = 0

    def hashes(self, key: str, text: str, block_chars: int, max_blocks: int,
               salt: int = 0) -> list[int]:
        """``salt`` must be the same for every turn under one ``key`` (the caller's key
        includes what salts)."""
        entry = self._entries.pop(key, None)
        known: list[int] = []
        if entry is not None:
            self._chars -= len(entry[0])
            if text.startswith(entry[0]):
                known = entry[1]
        hashes = block_hashes(text, block_chars, max_blocks, known, salt)
        hashed = text[:len(hashes) * block_chars]
        self._entries[key] = (hashed, hashes)
        self._chars += len(hashed)
        while self._chars > self.max_chars and self._entries:
            self._chars -= len(self._entries.popitem(last=False)[1][0])
        return hashes


class PrefixIndex:
    """Block hash -> replicas holding it, with a per-replica LRU of ``capacity`` blocks
    and a time-to-live. Not thread-safe: used from the event loop only."""

    def __init__(self, capacity_per_replica: int, ttl_s: float,
                 clock: Callable[[], float]) -> None:
        self.capacity, self.ttl_s, self.clock = capacity_per_replica, ttl_s, clock
        self._holders: dict[int, set[str]] = {}
        self._lru: dict[str, OrderedDict[int, float]] = {}
        # Replicas whose engine told us its KV size get a bound of their own.
        self._capacity: dict[str, int] = {}

    def set_capacity(self, replica_id: str, blocks: int) -> None:
        """Bound one replica's memory (e.g. to its engine's KV cache size); takes effect
        on its next insert."""
        self._capacity[replica_id] = max(1, blocks)

    def matched(self, hashes: list[int], replica_ids: Iterable[str]) -> dict[str, int]:
        """Replica id -> how many leading blocks of ``hashes`` it holds."""
        return closed_depths(hashes, self._holders, replica_ids)

    def insert(self, replica_id: str, hashes: list[int]) -> None:
        lru = self._lru.get(replica_id)
        if lru is None:
            lru = self._lru[replica_id] = OrderedDict()
        now = self.clock()
        holders = self._holders
        for h in reversed(hashes):  # tail first: the head ends most recent
            if h in lru:
                lru.move_to_end(h)
            else:
                holders.setdefault(h, set()).add(replica_id)
            lru[h] = now
        oldest = now - self.ttl_s
        capacity = self._capacity.get(replica_id, self.capacity)
        while lru and (len(lru) > capacity or next(iter(lru.values())) < oldest):
            self._drop(replica_id, lru.popitem(last=False)[0])

    def _drop(self, replica_id: str, h: int) -> None:
        holders = self._holders.get(h)
        if holders is not None:
            holders.discard(replica_id)
            if not holders:
                del self._holders[h]

    def size(self, replica_id: str) -> int:
        return len(self._lru.get(replica_id, ()))

    def blocks(self) -> int:
        """Distinct blocks held by any replica (the map's size)."""
        return len(self._holders)

    def retain(self, replica_ids: set[str]) -> None:
        """Forget replicas that left the pool, and their blocks."""
        for gone in set(self._lru) - replica_ids:
            self.drop(gone)

    def drop(self, replica_id: str) -> None:
        """Forget one replica and every block it held."""
        for h in self._lru.pop(replica_id, ()):
            self._drop(replica_id, h)
        self._capacity.pop(replica_id, None)


def closed_depths(hashes: Sequence[int], holders: Mapping[int, set[str]],
                  replica_ids: Iterable[str]) -> dict[str, int]:
    """Replica id -> how many leading blocks of ``hashes`` it holds, where every
    replica's blocks are prefix-closed (holding block i means holding blocks 0..i-1).
    The replicas still matching shrink as the depth grows; each place where some drop out
    is found by bisection."""
    alive = set(replica_ids)
    depths = dict.fromkeys(alive, 0)
    low, total = 0, len(hashes)  # every replica in ``alive`` holds hashes[:low]
    empty: set[str] = set()
    while alive and low < total:
        if alive <= holders.get(hashes[total - 1], empty):
            low = total
            break
        # Bisect for the first depth that some replica of ``alive`` lacks.
        high = total - 1  # alive does not all hold hashes[high]
        while low < high:
            mid = (low + high) // 2
            if alive <= holders.get(hashes[mid], empty):
                low = mid + 1
            else:
                high = mid
        survivors = alive & holders.get(hashes[low], empty)
        for rid in alive - survivors:
            depths[rid] = low
        alive = survivors
        low += 1
    for rid in alive:
        depths[rid] = low
    return depths
