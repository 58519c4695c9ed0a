"""How far each replica's cache predictions come true, as a factor on its affinity scores.

The prefix index predicts what a replica's engine still holds; the engine reports what it
really had (``usage.prompt_tokens_details.cached_tokens``). Where the index promises more
than the engine delivers (the engine evicted what the index remembers), affinity to that
replica is worth less than configured and load should count for more. Per replica, an
exponentially weighted average of the predicted and of the observed cached share; their
ratio, clamped to [floor, 1], scales that replica's affinity scores. Reliable or
pessimistic predictions keep the configured weight; a run of matched predictions brings
a discounted replica back.
"""

from __future__ import annotations

# Weight of the newest sample in both averages: ~50 requests per replica to move most
# of the way, so one unlucky eviction does not swing routing.
ALPHA = 0.05
# Samples a replica needs before its factor moves from 1: a ratio of one or two samples
# says more about the prompt than about the cache.
MIN_SAMPLES = 8


class CacheTrust:
    """Replica id -> the factor (floor..1) on its affinity scores. A floor of 1 turns
    the feedback off. Costs a few float operations per reported request; nothing per
    request that reports no cached tokens."""

    __slots__ = ("floor", "factors", "_predicted", "_observed", "_samples")

    def __init__(self, floor: float = 0.5) -> None:
        self.floor = floor
        # Only replicas that moved from 1 are here: the hot path reads it with a default.
        self.factors: dict[str, float] = {}
        self._predicted: dict[str, float] = {}
        self._observed: dict[str, float] = {}
        self._samples: dict[str, int] = {}

    def factor(self, replica_id: str) -> float:
        return self.factors.get(replica_id, 1.0)

    def observe(self, replica_id: str, predicted: float, observed: float) -> None:
        """One request on ``replica_id``: the share of its prompt predicted cached there,
        and the share the engine reported cached (both 0..1)."""
        if self.floor >= 1 or (predicted <= 0 and observed <= 0):
            return  # nothing promised, nothing found: says nothing about the index
        # Both averages start at 0, so both carry the same start-up bias and their ratio
        # none.
        p = self._predicted.get(replica_id, 0.0)
        o = self._observed.get(replica_id, 0.0)
        p += ALPHA * (predicted - p)
        o += ALPHA * (observed - o)
        self._predicted[replica_id], self._observed[replica_id] = p, o
        samples = self._samples[replica_id] = self._samples.get(replica_id, 0) + 1
        if samples < MIN_SAMPLES:
            return
        factor = max(self.floor, min(1.0, o / p)) if p > 0 else 1.0
        if factor < 1.0:
            self.factors[replica_id] = factor
        else:
            self.factors.pop(replica_id, None)

    def forget(self, replica_id: str) -> None:
        """A replica that comes back under the same id starts trusted, with a cold cache."""
        for table in (self.factors, self._predicted, self._observed, self._samples):
            table.pop(replica_id, None)
