"""A replica's LoRA adapter slots: at most ``capacity`` adapters resident, LRU.

A request whose adapter is not resident loads it first (``load_ms`` of the replica's
accelerator, charged to that request's time to first token), evicting the least
recently used adapter when the slots are full. Loading on demand is what vLLM does for a
name it can resolve (a LoRA resolver) and what sglang-router's workers need, since it
never loads adapters itself; a gateway that manages residency loads and unloads through
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (``sim_engine.py``) instead.

Simplification, as for KV blocks: an adapter in use by a running request can be evicted.
"""

from __future__ import annotations

from collections import OrderedDict


class AdapterSlots:
    """Resident adapter names, least recently used first. Event-loop only; the caller
    serialises loads (the replica's prefill lane) and sleeps their cost."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._resident: OrderedDict[str, None] = OrderedDict()
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

    def load(self, name: str) -> None:
        """Make ``name`` resident (the cost was paid by the caller), evicting the LRU."""
        if self.touch(name):
            return
        self._resident[name] = None
        self.loads += 1
        while len(self._resident) > self.capacity:
            self._resident.popitem(last=False)
            self.evictions += 1

    def unload(self, name: str) -> bool:
        return self._resident.pop(name, 0) is None

    def clear(self) -> None:
        self._resident.clear()
        self.loads = self.evictions = 0
