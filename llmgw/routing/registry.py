"""The explicit tables of routing plugins and built-in policies. No import side effects,
no scanning: a name is here or it is an error naming the YAML path."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ValidationError

from llmgw.config import ConfigError, LoadGuardConfig, PluginSpec, PolicyConfig
from llmgw.routing.base import Filter, LoadGuard, Pipeline, RoutingPolicy, Scorer
from llmgw.routing.filters import HasCapacityFilter, RoleFilter
from llmgw.routing.least_load import LeastLoadScorer
from llmgw.routing.lora_affinity import HasAdapterFilter, LoraAffinityScorer
from llmgw.routing.prefix_cache import PrefixCacheScorer
from llmgw.routing.round_robin import RoundRobinPolicy
from llmgw.routing.session import SessionScorer

SCORERS: dict[str, Any] = {
    LeastLoadScorer.type_name: LeastLoadScorer,
    PrefixCacheScorer.type_name: PrefixCacheScorer,
    SessionScorer.type_name: SessionScorer,
    LoraAffinityScorer.type_name: LoraAffinityScorer,
}
FILTERS: dict[str, Any] = {
    HasCapacityFilter.type_name: HasCapacityFilter,
    RoleFilter.type_name: RoleFilter,
    HasAdapterFilter.type_name: HasAdapterFilter,
}


def _spec(*scorers: tuple[str, float], guard: bool = True) -> PolicyConfig:
    return PolicyConfig(scorers=[PluginSpec(type=t, weight=w) for t, w in scorers],
                        load_guard=LoadGuardConfig() if guard else None)


# Built-in policies, usable by name without a `policies:` entry.
PRESETS: dict[str, PolicyConfig] = {
    "least-load": _spec(("least-load", 1.0), guard=False),
    # Prefix affinity first; load breaks ties, and the guard overrules on imbalance.
    "prefix-aware": _spec(("prefix-cache", 2.0), ("least-load", 1.0)),
    # Sessions stick to their replica; without a session, prefix then load decide.
    "session-aware": _spec(("session", 3.0), ("prefix-cache", 1.0), ("least-load", 1.0)),
}
ROUND_ROBIN = "round-robin"


def policy_names(custom: dict[str, PolicyConfig] | None = None) -> list[str]:
    return sorted({ROUND_ROBIN, *PRESETS, *(custom or {})})


def make_policy(name: str, rng: random.Random,
                custom: dict[str, PolicyConfig] | None = None) -> RoutingPolicy:
    """Raises KeyError for an unknown name, ConfigError for bad plugin params."""
    if name == ROUND_ROBIN:
        return RoundRobinPolicy(rng)
    custom = custom or {}
    where = f"policies.{name}" if name in custom else f"<built-in policy {name}>"
    spec = custom[name] if name in custom else PRESETS[name]
    filters: list[Filter] = [_plugin(FILTERS, f, f"{where}.filters[{i}]")
                             for i, f in enumerate(spec.filters)]
    scorers: list[tuple[Scorer, float]] = [(_plugin(SCORERS, s, f"{where}.scorers[{i}]"), s.weight)
                                           for i, s in enumerate(spec.scorers)]
    guard = spec.load_guard
    return Pipeline(filters, scorers, rng,
                    LoadGuard(guard.abs_threshold, guard.rel_threshold) if guard else None)


def _plugin(table: dict[str, Any], spec: PluginSpec, where: str) -> Any:
    cls = table.get(spec.type)
    if cls is None:
        raise ConfigError(f"{where}.type: unknown {spec.type!r}; known: {', '.join(sorted(table))}")
    params_model: type[BaseModel] = cls.Params
    try:
        params = params_model.model_validate(spec.params)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}.params.{loc}: {first['msg']}") from None
    return cls(params)
