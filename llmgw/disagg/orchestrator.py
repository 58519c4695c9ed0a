"""``Disaggregation``: what the dispatcher calls for a model served by a prefill pool and
a decode pool. It runs the decode pool's policy (the replica that will stream the answer),
decides the path (``decide``), runs the prefill pool's policy when a prefill leg is
planned, and hands the request to its protocol's flow. The dispatcher gets back the
decode leg, relayed and accounted like any other request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from llmgw.config import ConditionalPDConfig
from llmgw.disagg.decide import choose_path, prompt_tokens
from llmgw.disagg.legs import Legs
from llmgw.disagg.plan import PDDecision, Plan
from llmgw.engines.base import UpstreamResponse
from llmgw.errors import InvalidRequest, NoReplica
from llmgw.pool import Replica
from llmgw.routing.base import Decision, Need
from llmgw.types import RequestContext


class Flow(Protocol):
    """One engine family's two-leg request (``vllm_flow``, ``sglang_flow``)."""

    serves_aggregated: bool

    def splittable(self, parsed: Mapping[str, Any]) -> bool: ...

    async def open(self, legs: Legs, plan: Plan, ctx: RequestContext, path: str,
                   parsed: Mapping[str, Any], body: bytes, upstream_id: str,
                   deadline: float | None) -> tuple[Replica, UpstreamResponse]:
        """Send the legs; return the decode replica (its in-flight count held for the
        caller) and its answer. Raises GatewayError when the request cannot be served."""
        ...


@dataclass(slots=True)
class Opened:
    replica: Replica
    upstream: UpstreamResponse
    decision: Decision | None


class Disaggregation:
    """One disaggregated model. Used from the event loop only."""

    def __init__(self, model: str, legs: Legs, flow: Flow,
                 conditional: ConditionalPDConfig) -> None:
        self.model = model
        # Both pools (kept by ``legs``) fill as replicas join and shrink as they leave.
        self.prefill, self.decode = legs.prefill, legs.decode
        self.legs, self.flow, self.conditional = legs, flow, conditional
        self._by_id: dict[str, Replica] = {}
        # The prompt's length decides the path (unless every request is split).
        own: frozenset[Need] = frozenset({"prompt"}) if conditional.enabled else frozenset()
        self.needs = legs.prefill_policy.needs | legs.decode_policy.needs | own

    def added(self, replica: Replica) -> None:
        (self.prefill if replica.role == "prefill" else self.decode).append(replica)
        self._by_id[replica.id] = replica

    def removed(self, replica: Replica) -> None:
        if self._by_id.pop(replica.id, None) is None:
            return
        (self.prefill if replica.role == "prefill" else self.decode).remove(replica)
        self.legs.prefill_policy.forget(replica.id)
        self.legs.decode_policy.forget(replica.id)

    def plan(self, ctx: RequestContext, parsed: Mapping[str, Any] | None) -> Plan:
        """Both pools' rankings and the path. Pure apart from the policies' per-request
        bookkeeping; ``parsed`` None (a dry run without a body) counts as splittable."""
        decode = self.legs.decode_policy.explain(
            ctx, [r.view() for r in self.decode if r.routable])
        if not decode.ranked:
            raise NoReplica(f"no healthy decode replica for model '{self.model}'; "
                            f"retry shortly")
        cached = decode.predicted.get(decode.ranked[0].id) if decode.predicted else None
        prefill_views = [r.view() for r in self.prefill if r.routable]
        tokens = prompt_tokens(ctx, self.conditional.chars_per_token)
        path, reason = choose_path(
            self.conditional, tokens=tokens, cached_share=cached, prefill=prefill_views,
            splittable=parsed is None or self.flow.splittable(parsed),
            serves_aggregated=self.flow.serves_aggregated)
        prefill = self.legs.prefill_policy.explain(ctx, prefill_views) \
            if path == "disaggregated" else None
        decision = PDDecision(
            ranked=decode.ranked, dropped=decode.dropped, scores=decode.scores,
            totals=decode.totals, guard=decode.guard, predicted=decode.predicted,
            disaggregation={
                "path": path, "reason": reason, "prompt_tokens": round(tokens),
                "decode_cached_share": None if cached is None else round(cached, 4),
                "prefill": prefill.as_dict() if prefill is not None else None,
            })
        return Plan(path, reason, [self._by_id[v.id] for v in decode.ranked],
                    [self._by_id[v.id] for v in prefill.ranked] if prefill else [], decision)

    async def open(self, ctx: RequestContext, path: str, body: bytes, upstream_id: str,
                   deadline: float | None, explain: bool) -> Opened:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:  # the API layer parsed it already: not expected
            raise InvalidRequest("request body is not valid JSON") from None
        plan = self.plan(ctx, parsed)
        replica, upstream = await self.flow.open(self.legs, plan, ctx, path, parsed, body,
                                                 upstream_id, deadline)
        self.legs.metrics.routed(plan.path, plan.reason)
        return Opened(replica, upstream, plan.decision if explain else None)

    def explain(self, ctx: RequestContext) -> PDDecision:
        """A dry run: the path and both pools' decisions, nothing sent."""
        try:
            return self.plan(ctx, None).decision
        except NoReplica as exc:
            return PDDecision(ranked=[], disaggregation={"path": None, "error": exc.message})
