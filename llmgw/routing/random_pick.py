"""Random: a seeded uniform shuffle of the healthy replicas, regardless of load, prefix or
adapter. The baseline adapter-aware routing is measured against (bench/lora)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmgw.routing.base import Decision, Need
from llmgw.types import Outcome, ReplicaView, RequestContext


class RandomPolicy:
    needs: frozenset[Need] = frozenset()

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        return self._rng.sample(list(replicas), len(replicas))

    def explain(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> Decision:
        return Decision(ranked=self.rank(ctx, replicas))

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        return None

    def on_done(self, ctx: RequestContext, replica_id: str, outcome: Outcome,
                prompt_tokens: int | None = None) -> None:
        return None

    def take_prediction(self, ctx: RequestContext) -> float | None:
        return None
