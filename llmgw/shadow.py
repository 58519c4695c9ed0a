"""Shadow policies: candidates that rank every live request beside the live policy but
decide nothing, so operators can see what switching would do before they switch.

A shadow learns from where requests really went (its prefix memory mirrors the engines'
caches as they are), and exports per request: whether it agreed with the live pick, which
replica it would have picked (its counterfactual load spread), and the prompt share its
pick would have found cached by its own index (its counterfactual hit rate). Each shadow
costs one extra explained ranking per request: opt-in per model (``shadow:``).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmgw.metrics import ShadowMetrics
from llmgw.routing.base import RoutingPolicy
from llmgw.types import ReplicaView, RequestContext


class Shadow:
    def __init__(self, name: str, policy: RoutingPolicy, metrics: ShadowMetrics) -> None:
        self.name, self.policy, self.metrics = name, policy, metrics

    def observe(self, ctx: RequestContext, replicas: Sequence[ReplicaView],
                chosen_id: str) -> None:
        decision = self.policy.explain(ctx, replicas)
        if decision.ranked:
            pick = decision.ranked[0].id
            (self.metrics.agreed if pick == chosen_id else self.metrics.disagreed).inc()
            self.metrics.picked(pick)
            share = decision.predicted.get(pick)
            if share is not None:
                self.metrics.predicted_share.observe(share)
        self.policy.on_routed(ctx, chosen_id)
        self.policy.take_prediction(ctx)  # the live policy's calibration is what counts
