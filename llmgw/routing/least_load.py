"""Least-load: prefer the replica with the fewest requests open, counting the engine's own
queue when it reports one."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from llmgw.routing.base import NoParams, Pipeline
from llmgw.types import ReplicaView, RequestContext


class LeastLoadScorer:
    """Score 1 for the least-loaded replica, falling linearly to 0 for the most loaded.

    Load is the gateway's exact in-flight count plus the engine-reported queue depth
    (requests the engine has but has not started), which covers traffic from other
    gateways sharing the engine.
    """

    type_name: ClassVar[str] = "least-load"
    Params: ClassVar[type[NoParams]] = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.params = params or NoParams()

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        loads = {r.id: r.in_flight + (r.queue_depth or 0) for r in replicas}
        low, high = min(loads.values(), default=0), max(loads.values(), default=0)
        if high == low:
            return dict.fromkeys(loads, 1.0)
        return {rid: (high - load) / (high - low) for rid, load in loads.items()}


class LeastLoadPolicy(Pipeline):
    type_name: ClassVar[str] = "least-load"

    def __init__(self, rng: random.Random) -> None:
        super().__init__([], [(LeastLoadScorer(), 1.0)], rng)
