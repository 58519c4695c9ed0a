"""A replica's LoRA adapter slots: at most ``capacity`` adapters resident, LRU.

A request whose adapter is not resident loads it first (``load_ms`` of the replica's
accelerator, charged to that request's time to first token), evicting the least
recently used adapter that no running request uses. When every slot serves running
requests, the request waits for one to free, as vLLM's scheduler does not admit a
request whose adapter would exceed ``--max-loras`` in the batch. Loading on demand is
what vLLM does for a name it can resolve (a LoRA resolver) and what sglang-router's
workers need, since it never loads adapters itself; a gateway that manages residency
loads and unloads through ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``
(``sim_engine.py``) instead.
"""

from __future__ import annotations

from collections import Counter, OrderedDict


class AdapterSlots:
    """Resident adapter names, least recently used first, and how many running requests
    use each (pins). Event-loop only; the replica serialises loads on its prefill lane,
    sleeps their cost and waits for :meth:`has_room`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._resident: OrderedDict[str, None] = OrderedDict()
        self._pins: Counter[str] = Counter()
        self.loads = 0
        self.evictions = 0

    def __contains__(self, name: str) -> bool:
        return name in self._resident

    def names(self) -> list[str]:
        return list(self._resident)

    def touch(self, name: str) -> bool:
        """Mark ``name`` used; False when it is not resident (it must be loaded)."""
        if name not in self._resident:
            return False
        self._resident.move_to_end(name)
        return True

    def has_room(self) -> bool:
        """Whether one more adapter can be loaded: a free slot, or one no request uses."""
        return len(self._resident) < self.capacity or any(
            not self._pins[name] for name in self._resident
        )

    def make_room(self) -> None:
        """Free a slot when all are taken: evict the least recently used adapter no
        request uses. Call only when :meth:`has_room`, before a load's cost is slept, so
        that no request pins the victim meanwhile."""
        if len(self._resident) >= self.capacity:
            victim = next(n for n in self._resident if not self._pins[n])
            del self._resident[victim]
            self.evictions += 1

    def load(self, name: str) -> None:
        """Make ``name`` resident (the cost was paid by the caller), after
        :meth:`make_room` when needed."""
        if self.touch(name):
            return
        self.make_room()
        self._resident[name] = None
        self.loads += 1

    def pin(self, name: str) -> None:
        self._pins[name] += 1

    def unpin(self, name: str) -> None:
        self._pins[name] -= 1
        if self._pins[name] <= 0:
            del self._pins[name]

    def unload(self, name: str) -> bool:
        return self._resident.pop(name, 0) is None

    def clear(self) -> None:
        """Forget what is resident and the counts; pins of running requests stay."""
        self._resident.clear()
        self.loads = self.evictions = 0
