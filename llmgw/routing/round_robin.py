"""Round-robin: each replica in turn, regardless of load. The baseline to beat."""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmgw.routing.base import Decision, Need
from llmgw.types import Outcome, ReplicaView, RequestContext


class RoundRobinPolicy:
    needs: frozenset[Need] = frozenset()

    def __init__(self, rng: random.Random) -> None:
        # Start at a seeded offset so several gateways do not all begin on replica 0.
        self._next = rng.randrange(1 << 16)

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        if not replicas:
            return []
        start = self._next % len(replicas)
        self._next += 1
        return [*replicas[start:], *replicas[:start]]

    def explain(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> Decision:
        return Decision(ranked=self.rank(ctx, replicas))

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        return None

    def on_done(self, ctx: RequestContext, replica_id: str, outcome: Outcome,
                prompt_tokens: int | None = None) -> None:
        return None

    def take_prediction(self, ctx: RequestContext) -> float | None:
        return None
