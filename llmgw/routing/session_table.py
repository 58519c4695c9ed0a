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


class SessionTable:
    """session key -> replica id, least recently seen first out, with per-replica counts."""

    def __init__(self, capacity: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.ttl_s, self.clock = capacity, ttl_s, clock
        self._homes: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._homes)

    def home(self, key: str) -> str | None:
        """The replica the session was last routed to, if it is still live."""
        self._expire()
        entry = self._homes.get(key)
        return entry[0] if entry else None

    def counts(self) -> Counter[str]:
        """Live sessions per replica (a replica with none may be absent)."""
        self._expire()
        return self._counts

    def put(self, key: str, replica_id: str) -> None:
        """The session's request went to ``replica_id``: it lives there from now on."""
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
        self._counts.pop(replica_id, None)

    def _expire(self) -> None:
        oldest = self.clock() - self.ttl_s
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
