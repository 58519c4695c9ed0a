"""``ModelGroup``: one served model name and everything the request path keeps for it:
its replicas (as they join and leave), its routing policy and shadows, timeouts, retry
budget, LoRA and PD state, the queues in front of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgw.admission import FairQueue
from llmgw.config import TimeoutConfig
from llmgw.disagg.orchestrator import Disaggregation
from llmgw.engines.base import Engine
from llmgw.engines.prompt_tokens import PromptTokenizer
from llmgw.lora.group import LoraGroup
from llmgw.metrics import ModelMetrics
from llmgw.pool import Replica, ReplicaWait
from llmgw.resilience.budget import RetryBudget
from llmgw.routing.base import Need, RoutingPolicy
from llmgw.shadow import Shadow
from llmgw.types import ReplicaView


@dataclass
class ModelGroup:
    """One served model name -> its replicas and the policy that picks among them.

    Replicas join and leave at run time: the group is the pool's membership listener
    for its model (``added`` / ``removed``) and passes each change on to whatever it
    keeps per replica (policies' memories, LoRA residency, the PD pools). The request
    path reads ``replicas`` afresh on every request."""

    name: str
    upstream_model: str
    # The engine client class: what it adds to request bodies (``body_fields``).
    engine: type[Engine]
    policy: RoutingPolicy
    policy_name: str
    timeouts: TimeoutConfig
    max_attempts: int
    metrics: ModelMetrics
    # Candidate policies that see every request but decide nothing (shadow.py).
    shadows: list[Shadow] = field(default_factory=list)
    # The model's tokenizer, when a policy routes on the prompt's tokens.
    tokenizer: PromptTokenizer | None = None
    # LoRA adapters multiplexed over the replicas (lora: in the config).
    lora: LoraGroup | None = None
    # Prefill-decode disaggregation: prefill and decode pools among ``replicas``; then
    # ``policy`` is the decode pool's.
    disagg: Disaggregation | None = None
    # Requests wait here while the model has no routable replica (scaled to zero).
    waiter: ReplicaWait | None = None
    # Requests past the replicas' admission limit wait here (admission:); the API layer
    # acquires a slot before ``Dispatcher.open`` and releases it when the request ends.
    admission: FairQueue | None = None
    replicas: list[Replica] = field(default_factory=list)
    # How many retries the model may spend (llmgw.resilience.budget).
    retry_budget: RetryBudget = field(default_factory=RetryBudget)
    _by_id: dict[str, Replica] = field(init=False, repr=False)
    # What the live and shadow policies need computed per request.
    needs: frozenset[Need] = field(init=False)

    def __post_init__(self) -> None:
        self._by_id = {r.id: r for r in self.replicas}
        self.needs = self.policy.needs.union(*(s.policy.needs for s in self.shadows))
        if self.disagg is not None:
            self.needs |= self.disagg.needs

    def replica(self, replica_id: str) -> Replica:
        return self._by_id[replica_id]

    def views(self) -> list[ReplicaView]:
        """The replicas a request may go to now: ready (not draining) and healthy."""
        return [r.view() for r in self.replicas if r.routable]

    def routable(self) -> bool:
        return any(r.routable and r.role != "prefill" for r in self.replicas)

    def serving_replicas(self) -> int:
        """Replicas that answer requests now (a disaggregated model's decode pool)."""
        return sum(1 for r in self.replicas if r.routable and r.role != "prefill")

    def added(self, replica: Replica) -> None:
        self.replicas.append(replica)
        self._by_id[replica.id] = replica
        if self.lora is not None:
            self.lora.added(replica)
        if self.disagg is not None:
            self.disagg.added(replica)
        if self.waiter is not None:
            self.waiter.notify()
        if self.admission is not None:
            self.admission.poke()

    def removed(self, replica: Replica) -> None:
        if self._by_id.pop(replica.id, None) is None:
            return
        self.replicas.remove(replica)
        for policy in (self.policy, *(s.policy for s in self.shadows)):
            policy.forget(replica.id)
        if self.lora is not None:
            self.lora.removed(replica)
        if self.disagg is not None:
            self.disagg.removed(replica)
