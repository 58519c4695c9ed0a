"""Adapter affinity: send a LoRA request where its adapter is already loaded, else where a
load is cheapest (a free adapter slot beats evicting another adapter).

``RequestContext.adapter`` names the adapter; ``ReplicaView.adapters`` and
``max_adapters`` say what each replica holds (kept by the LoRA residency layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from llmgw.routing.base import Need, NoParams
from llmgw.types import ReplicaView, RequestContext


class LoraAffinityScorer:
    """1 where the adapter is resident, 0.5 where a slot is free, 0 where loading it
    would evict another adapter; no opinion for base-model requests."""

    type_name: ClassVar[str] = "lora-affinity"
    Params: ClassVar[type[NoParams]] = NoParams
    needs: ClassVar[frozenset[Need]] = frozenset()
    reads_only: ClassVar[bool] = True  # keeps nothing of a request (Scorer)

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        if ctx.adapter is None:
            return {}
        return {r.id: 1.0 if ctx.adapter in r.adapters
                else 0.5 if has_free_slot(r) else 0.0 for r in replicas}

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        return None


def has_free_slot(replica: ReplicaView) -> bool:
    """An adapter can be loaded on ``replica`` without evicting another."""
    return len(replica.adapters) < replica.max_adapters


class HasAdapterFilter:
    """Only replicas holding the request's adapter, when any does; otherwise all (the
    adapter will be loaded where the scorers say)."""

    type_name: ClassVar[str] = "has-adapter"
    Params: ClassVar[type[NoParams]] = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def filter(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        if ctx.adapter is None:
            return list(replicas)
        holding = [r for r in replicas if ctx.adapter in r.adapters]
        return holding or list(replicas)
