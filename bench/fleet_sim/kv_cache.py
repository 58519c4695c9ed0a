"""A replica's prefix cache: a fixed number of KV blocks keyed by chained hashes, LRU."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class BlockLRU:
    """At most ``capacity`` block hashes, least recently used evicted first.

    Not thread-safe; the simulator touches it from its event loop only. Blocks of running
    requests are not pinned: the simulation lets a running request's blocks be evicted,
    which real engines defer until the request ends (a small difference at these sizes).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._blocks: OrderedDict[bytes, None] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def cached_prefix(self, hashes: Sequence[bytes]) -> int:
        """How many leading blocks of ``hashes`` are present (a lookup, not a use)."""
        for i, block in enumerate(hashes):
            if block not in self._blocks:
                return i
        return len(hashes)

    def use(self, hashes: Sequence[bytes]) -> None:
        """Insert or refresh a sequence's blocks. They are refreshed tail first, so the
        sequence's root ends most recent: eviction then takes a sequence's tail before its
        shared prefix, as vLLM's free queue does (a child is useless without its parent)."""
        blocks = self._blocks
        for block in reversed(hashes):
            if block in blocks:
                blocks.move_to_end(block)
            else:
                blocks[block] = None
        while len(blocks) > self.capacity:
            blocks.popitem(last=False)
            self.evicted += 1

    def clear(self) -> None:
        self._blocks.clear()
        self.evicted = 0
