"""Where each live session was routed, and how many live sessions each replica holds.

The session scorer keeps a session on the replica it was routed to (its KV cache holds
the history) and places a new session by these counts, so sessions spread evenly instead
of by the luck of a hash. Bounded: at most ``capacity`` sessions, each forgotten after
``ttl_s`` without a request (a finished conversation stops counting against its replica).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

PENDING_CAPACITY = 4096
PENDING_TTL_S = 30.0


class SessionTable:
    """session key -> replica id, least recently seen first out, with per-replica counts."""

    def __init__(self, capacity: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.ttl_s, self.clock = capacity, ttl_s, clock
        self._homes: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._counts: Counter[str] = Counter()
        # Placed, not yet routed: a session counts from the moment it is placed, or a
        # burst of first turns, all scored before any is answered, would all see the same
        # counts and land together. Bounded, and dropped after PENDING_TTL_S (a dry run
        # or a request that failed is never routed).
        self._pending: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._homes)

    def home(self, key: str) -> str | None:
        """The replica the session was last routed to, if it is still live."""
        self._expire()
        entry = self._homes.get(key)
        return entry[0] if entry else None

    def counts(self) -> Counter[str]:
        """Live sessions per replica, placed ones included (a replica with none may be
        absent)."""
        self._expire()
        placed = Counter(rid for rid, _ in self._pending.values())
        return self._counts + placed if placed else self._counts

    def place(self, key: str, replica_id: str) -> None:
        """A new session was offered ``replica_id``: count it there until it is routed."""
        self._pending.pop(key, None)
        self._pending[key] = (replica_id, self.clock())
        while len(self._pending) > PENDING_CAPACITY:
            self._pending.popitem(last=False)

    def put(self, key: str, replica_id: str) -> None:
        """The session's request went to ``replica_id``: it lives there from now on."""
        self._pending.pop(key, None)
        old = self._homes.pop(key, None)
        if old is not None:
            self._release(old[0])
        self._homes[key] = (replica_id, self.clock())
        self._counts[replica_id] += 1
        while len(self._homes) > self.capacity:
            self._release(self._homes.popitem(last=False)[1][0])

    def drop(self, replica_id: str) -> None:
        """The replica left: its sessions are placed afresh on their next request."""
        for key in [k for k, (rid, _) in self._homes.items() if rid == replica_id]:
            del self._homes[key]
        for key in [k for k, (rid, _) in self._pending.items() if rid == replica_id]:
            del self._pending[key]
        self._counts.pop(replica_id, None)

    def _expire(self) -> None:
        now = self.clock()
        while self._pending and next(iter(self._pending.values()))[1] < now - PENDING_TTL_S:
            self._pending.popitem(last=False)
        oldest = now - self.ttl_s
        while self._homes:
            key, (rid, seen) = next(iter(self._homes.items()))
            if seen >= oldest:
                return
            del self._homes[key]
            self._release(rid)

    def _release(self, replica_id: str) -> None:
        self._counts[replica_id] -= 1
        if self._counts[replica_id] <= 0:
            del self._counts[replica_id]
