"""One request's plan: the path (disaggregated, aggregated, fallback), why, both pools'
ranked replicas, and the explanation shown in ``x-llmgw-route`` and ``/debug/route``."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgw.disagg.decide import Path, Reason
from llmgw.pool import Replica
from llmgw.routing.base import Decision


@dataclass(slots=True)
class PDDecision(Decision):
    """The decode pool's decision (``ranked`` is the decode replicas, best first) with
    the disaggregation verdict beside it: path, reason, the numbers behind it, and the
    prefill pool's own decision when a prefill leg was planned."""

    disaggregation: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        # Decision.as_dict called by name: zero-argument super() breaks in slotted dataclasses.
        return {**Decision.as_dict(self), "disaggregation": self.disaggregation}


@dataclass(slots=True)
class Plan:
    path: Path
    reason: Reason
    decode: list[Replica]
    prefill: list[Replica]
    decision: PDDecision

    def fall_back(self, reason: Reason) -> None:
        """The prefill leg failed: the request is served aggregated on a decode replica."""
        self.path, self.reason = "fallback", reason
        self.decision.disaggregation.update(path="fallback", reason=reason)

    def prefill_on(self, replica: Replica) -> None:
        self.decision.disaggregation["prefill_replica"] = replica.id
