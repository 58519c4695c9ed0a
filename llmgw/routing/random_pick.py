"""Random: a seeded uniform shuffle of the healthy replicas, regardless of load, prefix or
adapter. The baseline adapter-aware routing is measured against (bench/lora)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmgw.routing.base import OrderPolicy
from llmgw.types import ReplicaView, RequestContext


class RandomPolicy(OrderPolicy):
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        return self._rng.sample(list(replicas), len(replicas))
