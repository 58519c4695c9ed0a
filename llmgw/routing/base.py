"""The routing seam. Every method here is synchronous, pure over its inputs and does no I/O:
stats are gathered by the pool's loops and arrive as ``ReplicaView`` snapshots.

A policy is usually a :class:`Pipeline`: filters drop ineligible replicas, weighted
scorers rate the rest in [0, 1], and the replicas are ordered best first. A load guard
can overrule the scores when the replicas are too unevenly loaded.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from llmgw.routing.cache_trust import CacheTrust
from llmgw.types import Outcome, ReplicaView, RequestContext

# What a policy needs the API layer to compute per request (work skipped otherwise).
Need = Literal["prompt", "session", "tokens"]


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filter(Protocol):
    type_name: ClassVar[str]

    def filter(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        """The replicas that may serve ``ctx``, in the given order."""
        ...


class Scorer(Protocol):
    type_name: ClassVar[str]
    needs: ClassVar[frozenset[Need]]
    # Optional, read with getattr: True when ``score`` keeps nothing of the request and
    # only reads its inputs, so it may be skipped where no score can change the order.

    def score(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> dict[str, float]:
        """Replica id -> score in [0, 1], higher is better; missing ids score 0."""
        ...

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        """Stateful scorers (prefix index, sessions) learn where the request went."""
        ...


class RoutingPolicy(Protocol):
    """The only routing object the dispatcher calls. Not thread-safe: call it from the
    event loop only."""

    needs: frozenset[Need]

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        """Best first; ``[]`` means no eligible replica. Callers try them in order."""
        ...

    def explain(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> Decision:
        """The same ranking as ``rank``, with every filter's verdict and score."""
        ...

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        """The request was sent to ``replica_id``."""
        ...

    def on_done(self, ctx: RequestContext, replica_id: str, outcome: Outcome,
                prompt_tokens: int | None = None) -> None:
        """The request on ``replica_id`` finished with ``outcome``; the engine counted
        ``prompt_tokens`` (when it said)."""
        ...

    def take_prediction(self, ctx: RequestContext) -> float | None:
        """The share of the prompt (0..1) the policy expected the chosen replica to hold
        in its prefix cache, for calibration against what the engine reports; once."""
        ...

    def on_cached(self, ctx: RequestContext, replica_id: str, predicted: float,
                  observed: float) -> float | None:
        """The engine of ``replica_id`` reported ``observed`` of the prompt cached where
        ``take_prediction`` said ``predicted`` (shares, 0..1). Returns the factor now on
        that replica's cache affinity; None when the policy has none."""
        ...

    def forget(self, replica_id: str) -> None:
        """The replica left the pool for good: drop whatever was learned about it."""
        ...


@runtime_checkable
class ForgetsReplicas(Protocol):
    """A stateful plugin that keeps something per replica (an index, a ring): told when
    a replica leaves, so nothing about it lingers or is predicted again."""

    def forget(self, replica_id: str) -> None: ...


@runtime_checkable
class PredictsCache(Protocol):
    """A scorer that predicts how much of a prompt the chosen replica has cached."""

    def take_prediction(self, request_id: str) -> float | None: ...

    def offered(self, request_id: str) -> Mapping[str, float] | None:
        """The cached share predicted for every candidate of a scored request."""
        ...


@runtime_checkable
class LearnsPromptLength(Protocol):
    """A scorer that calibrates itself on the engine's token count of finished prompts."""

    def on_prompt_tokens(self, ctx: RequestContext, prompt_tokens: int) -> None: ...


@dataclass(slots=True)
class Decision:
    """Why replicas were ranked as they were: for the x-llmgw-route header and
    /debug/route. ``scores`` is scorer name -> replica id -> raw score in [0, 1]."""

    ranked: list[ReplicaView]
    dropped: dict[str, list[str]] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    guard: str | None = None
    # Replica id -> the prompt share the policy expects it to have cached.
    predicted: Mapping[str, float] = field(default_factory=dict)
    # Replica id -> the factor (floor..1) on its cache affinity scores (CacheTrust).
    affinity_factor: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        explained: dict[str, object] = {
            "ranked": [r.id for r in self.ranked], "dropped": self.dropped,
            "scores": {k: {r: round(v, 4) for r, v in s.items()} for k, s in self.scores.items()},
            "totals": {r: round(v, 4) for r, v in self.totals.items()}, "guard": self.guard,
            "predicted_cached_share": {r: round(v, 6) for r, v in self.predicted.items()},
        }
        if self.affinity_factor:  # a policy with cache affinity to scale
            explained["affinity_factor"] = {
                r: round(v, 3) for r, v in self.affinity_factor.items()}
        return explained


# Scores of scorers that are not cache affinity: never scaled.
_TRUSTED: Mapping[str, float] = {}


class LoadGuard:
    """SGLang's cache-aware balance rule: when the busiest replica has more than ``abs``
    requests above the idlest AND more than ``rel`` times its load, affinity is ignored and
    the least-loaded replicas win. Keeps a hot prefix from piling onto one replica."""

    def __init__(self, abs_threshold: int, rel_threshold: float) -> None:
        self.abs_threshold, self.rel_threshold = abs_threshold, rel_threshold

    def tripped(self, replicas: Sequence[ReplicaView]) -> str | None:
        loads = [r.load for r in replicas]
        if len(loads) < 2:
            return None
        low, high = min(loads), max(loads)
        if high - low > self.abs_threshold and high > self.rel_threshold * max(low, 1):
            return f"imbalance: max load {high} vs min {low}; least-load decides"
        return None


class Pipeline:
    """filters -> weighted scorers (or the load guard) -> best-first order. Ties break
    with a seeded rng so equal replicas share load instead of the first taking all."""

    def __init__(
        self,
        filters: Sequence[Filter],
        scorers: Sequence[tuple[Scorer, float]],
        rng: random.Random,
        guard: LoadGuard | None = None,
        trust: CacheTrust | None = None,
    ) -> None:
        self.filters = list(filters)
        self.scorers = list(scorers)
        self.rng = rng
        self.guard = guard
        self.trust = trust or CacheTrust()
        self.needs: frozenset[Need] = frozenset().union(*(s.needs for s, _ in scorers))
        self._predictors: list[PredictsCache] = [
            s for s, _ in scorers if isinstance(s, PredictsCache)]
        # The scorers whose scores are cache affinity: scaled by each replica's trust.
        self._affinity = {id(s) for s in self._predictors}
        self._learners: list[LearnsPromptLength] = [
            s for s, _ in scorers if isinstance(s, LearnsPromptLength)]
        # Scorers whose ``score`` keeps something of the request: the others only read
        # (``reads_only``), so with one candidate nothing is lost by not asking them.
        self._remembering = [s for s, _ in scorers if not getattr(s, "reads_only", False)]
        self._forgetters: list[ForgetsReplicas] = [
            p for p in (*filters, *(s for s, _ in scorers)) if isinstance(p, ForgetsReplicas)]

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        return self._decide(ctx, replicas, None)

    def explain(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> Decision:
        decision = Decision(ranked=[])
        decision.ranked = self._decide(ctx, replicas, decision)
        return decision

    def _decide(self, ctx: RequestContext, replicas: Sequence[ReplicaView],
                decision: Decision | None) -> list[ReplicaView]:
        """The ranking; ``decision``, when given (explained), collects its reasons."""
        eligible = list(replicas)
        for flt in self.filters:
            kept = flt.filter(ctx, eligible)
            if decision is not None:
                kept_ids = {r.id for r in kept}
                decision.dropped[flt.type_name] = [r.id for r in eligible if r.id not in kept_ids]
            eligible = kept
            if not eligible:
                return []
        if len(eligible) == 1 and decision is None:
            return self._only(ctx, eligible)
        totals = dict.fromkeys((r.id for r in eligible), 0.0)
        guard = self.guard.tripped(eligible) if self.guard else None
        if guard is not None:
            if decision is not None:
                decision.guard = guard
            for r in eligible:
                totals[r.id] = -float(r.load)
        else:
            for scorer, weight in self.scorers:
                scores = scorer.score(ctx, eligible)
                if decision is not None:
                    decision.scores[scorer.type_name] = scores
                factors = self.trust.factors if id(scorer) in self._affinity else _TRUSTED
                for rid, value in scores.items():
                    if rid in totals:
                        totals[rid] += weight * value * factors.get(rid, 1.0)
        rand = self.rng.random
        keyed = sorted((-totals[r.id], rand(), i) for i, r in enumerate(eligible))
        ranked = [eligible[i] for _, _, i in keyed]
        if decision is not None:
            decision.totals = totals
            offered = self._predictors[0].offered(ctx.request_id) if self._predictors else None
            decision.predicted = offered or {}
            if self._predictors:
                decision.affinity_factor = {r.id: self.trust.factor(r.id) for r in eligible}
        return ranked

    def _only(self, ctx: RequestContext, eligible: list[ReplicaView]) -> list[ReplicaView]:
        """One candidate: no score can reorder it (and the load guard needs two), but the
        scorers that remember requests (the prefix index's hashes and prediction) still
        see it, and the tie-break draws its number, so later rankings stay the same."""
        for scorer in self._remembering:
            scorer.score(ctx, eligible)
        self.rng.random()
        return eligible

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        for scorer, _ in self.scorers:
            scorer.on_routed(ctx, replica_id)

    def on_done(self, ctx: RequestContext, replica_id: str, outcome: Outcome,
                prompt_tokens: int | None = None) -> None:
        if prompt_tokens:
            for learner in self._learners:
                learner.on_prompt_tokens(ctx, prompt_tokens)

    def forget(self, replica_id: str) -> None:
        for plugin in self._forgetters:
            plugin.forget(replica_id)
        self.trust.forget(replica_id)

    def on_cached(self, ctx: RequestContext, replica_id: str, predicted: float,
                  observed: float) -> float | None:
        self.trust.observe(replica_id, predicted, observed)
        return self.trust.factor(replica_id)

    def take_prediction(self, ctx: RequestContext) -> float | None:
        # Every predictor's entry is taken (so none lingers); the first scorer's counts.
        found = None
        for predictor in self._predictors:
            taken = predictor.take_prediction(ctx.request_id)
            if found is None:
                found = taken
        return found


class OrderPolicy:
    """A policy that only orders replicas (round-robin, random): nothing to explain beyond
    the order, nothing to learn, nothing to predict. Subclasses implement ``rank``."""

    needs: frozenset[Need] = frozenset()

    def rank(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
        raise NotImplementedError

    def explain(self, ctx: RequestContext, replicas: Sequence[ReplicaView]) -> Decision:
        return Decision(ranked=self.rank(ctx, replicas))

    def on_routed(self, ctx: RequestContext, replica_id: str) -> None:
        return None

    def on_done(self, ctx: RequestContext, replica_id: str, outcome: Outcome,
                prompt_tokens: int | None = None) -> None:
        return None

    def take_prediction(self, ctx: RequestContext) -> float | None:
        return None

    def on_cached(self, ctx: RequestContext, replica_id: str, predicted: float,
                  observed: float) -> float | None:
        return None

    def forget(self, replica_id: str) -> None:
        return None
