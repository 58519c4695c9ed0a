"""The routing seam. Every method here is synchronous, pure over its inputs and does no I/O:
stats are gathered by the pool's loops and arrive as ``ReplicaView`` snapshots.

A policy is usually a :class:`Pipeline`: filters drop ineligible replicas, weighted
scorers rate the rest in [0, 1], and a picker orders them best first.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from llmgw.types import Outcome, ReplicaView, RequestContext


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filter(Protocol):
    def filter(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        """The replicas that may serve ``ctx``, in the given order."""
        ...


class Scorer(Protocol):
    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        """Replica id -> score in [0, 1], higher is better; missing ids score 0."""
        ...


class RoutingPolicy(Protocol):
    """The only routing object the dispatcher calls. Not thread-safe: call it from the
    event loop only."""

    type_name: ClassVar[str]

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        """Best first; ``[]`` means no eligible replica. Callers try them in order."""
        ...

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        """The request was sent to ``replica_id`` (stateful scorers learn here)."""
        ...

    def on_done(self, ctx: RequestContext, replica_id: str, outcome: Outcome) -> None:
        """The request on ``replica_id`` finished with ``outcome``."""
        ...


class Pipeline:
    """filters -> weighted scorers -> best-first order; ties break with a seeded rng so
    equal replicas share load instead of the first one taking everything."""

    type_name: ClassVar[str] = "pipeline"

    def __init__(
        self,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        rng: random.Random,
    ) -> None:
        self.filters = list(filters)
        self.scorers = list(scorers)
        self.rng = rng

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        eligible = list(replicas)
        for flt in self.filters:
            eligible = flt.filter(ctx, eligible)
            if not eligible:
                return []
        totals = dict.fromkeys((r.id for r in eligible), 0.0)
        for scorer, weight in self.scorers:
            for rid, value in scorer.score(ctx, eligible).items():
                if rid in totals:
                    totals[rid] += weight * value
        tie_break = {r.id: self.rng.random() for r in eligible}
        return sorted(eligible, key=lambda r: (-totals[r.id], tie_break[r.id]))

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        return None

    def on_done(self, ctx: RequestContext, replica_id: str, outcome: Outcome) -> None:
        return None
