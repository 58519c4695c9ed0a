"""Round-robin: each replica in turn, regardless of load. The baseline to beat."""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmgw.routing.base import OrderPolicy
from llmgw.types import ReplicaView, RequestContext


class RoundRobinPolicy(OrderPolicy):
    def __init__(self, rng: random.Random) -> None:
        # Start at a seeded offset so several gateways do not all begin on replica 0.
        self._next = rng.randrange(1 << 16)

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        if not replicas:
            return []
        start = self._next % len(replicas)
        self._next += 1
        return [*replicas[start:], *replicas[:start]]
