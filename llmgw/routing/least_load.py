"""Least-load: prefer the replica with the fewest requests, counting the engine's queue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from llmgw.routing.base import Need, NoParams
from llmgw.types import ReplicaView, RequestContext


class LeastLoadScorer:
    """Score 1 for the least-loaded replica, falling linearly to 0 for the most loaded.

    Load is the gateway's exact in-flight count plus the engine-reported queue depth
    (requests the engine holds but has not started), which covers traffic from other
    gateways sharing the engine.
    """

    type_name: ClassVar[str] = "least-load"
    Params: ClassVar[type[NoParams]] = NoParams
    needs: ClassVar[frozenset[Need]] = frozenset()
    reads_only: ClassVar[bool] = True  # keeps nothing of a request (Scorer)

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        loads = [r.load for r in replicas]
        low, high = min(loads, default=0), max(loads, default=0)
        if high == low:
            return {r.id: 1.0 for r in replicas}
        span = high - low
        return {r.id: (high - load) / span for r, load in zip(replicas, loads, strict=True)}

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        return None
