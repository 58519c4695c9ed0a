"""The explicit table of routing policies by name. No import side effects, no scanning."""

from __future__ import annotations

import random
from collections.abc import Callable

from llmgw.routing.base import RoutingPolicy
from llmgw.routing.least_load import LeastLoadPolicy
from llmgw.routing.round_robin import RoundRobinPolicy

PolicyFactory = Callable[[random.Random], RoutingPolicy]

POLICIES: dict[str, PolicyFactory] = {
    LeastLoadPolicy.type_name: LeastLoadPolicy,
    RoundRobinPolicy.type_name: RoundRobinPolicy,
}


def policy_names() -> list[str]:
    return sorted(POLICIES)


def make_policy(name: str, rng: random.Random) -> RoutingPolicy:
    """Raises KeyError for an unknown name; the caller turns it into a config error."""
    return POLICIES[name](rng)
