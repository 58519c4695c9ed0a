"""The explicit tables of routing plugins and built-in policies. No import side effects,
no scanning: a name is here or it is an error naming the YAML path."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ValidationError

from llmgw.config import ConfigError, LoadGuardConfig, PluginSpec, PolicyConfig
from llmgw.routing.base import Filter, LoadGuard, Pipeline, RoutingPolicy, Scorer
from llmgw.routing.cache_trust import CacheTrust
from llmgw.routing.filters import HasCapacityFilter, RoleFilter
from llmgw.routing.kv_block_index import KVBlockIndex
from llmgw.routing.kv_cache import KVCacheScorer
from llmgw.routing.least_load import LeastLoadScorer
from llmgw.routing.lora_affinity import HasAdapterFilter, LoraAffinityScorer
from llmgw.routing.prefix_cache import PrefixCacheScorer
from llmgw.routing.random_pick import RandomPolicy
from llmgw.routing.round_robin import RoundRobinPolicy
from llmgw.routing.session import SessionScorer

SCORERS: dict[str, Any] = {
    LeastLoadScorer.type_name: LeastLoadScorer,
    PrefixCacheScorer.type_name: PrefixCacheScorer,
    SessionScorer.type_name: SessionScorer,
    LoraAffinityScorer.type_name: LoraAffinityScorer,
    KVCacheScorer.type_name: KVCacheScorer,
}
# Scorers built on the engines' own reports: they share the model's KV block index.
_USES_KV_INDEX = frozenset({KVCacheScorer.type_name})
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
    # What the engines report holding (vLLM KV events), matched on the prompt's tokens.
    # The approximate scorer, at a lower weight, covers the moments before the engine
    # reports a prompt just sent (a burst of one prefix would otherwise scatter).
    "precise-prefix-aware": _spec(("kv-cache", 2.0), ("prefix-cache", 0.5), ("least-load", 1.0)),
}
ROUND_ROBIN = "round-robin"
RANDOM = "random"


def policy_names(custom: dict[str, PolicyConfig] | None = None) -> list[str]:
    return sorted({ROUND_ROBIN, RANDOM, *PRESETS, *(custom or {})})


def uses_kv_index(spec: PolicyConfig) -> bool:
    return any(s.type in _USES_KV_INDEX for s in spec.scorers)


def policy_spec(name: str, custom: dict[str, PolicyConfig] | None = None) -> PolicyConfig | None:
    """The pipeline a name stands for; None for round-robin and random (no pipeline).
    KeyError when unknown."""
    if name in (ROUND_ROBIN, RANDOM):
        return None
    return (custom or {}).get(name) or PRESETS[name]


# Added to every pipeline of a LoRA model that does not weigh adapter residency itself:
# a load costs far more than a prefix miss, so residency outweighs prefix and load.
LORA_AFFINITY_WEIGHT = 3.0


def make_policy(name: str, rng: random.Random,
                custom: dict[str, PolicyConfig] | None = None,
                kv_index: KVBlockIndex | None = None, lora: bool = False) -> RoutingPolicy:
    """Raises KeyError for an unknown name, ConfigError for bad plugin params.
    ``kv_index`` feeds the scorers that read engine-reported KV blocks; ``lora`` makes a
    pipeline prefer replicas holding the request's adapter."""
    spec = policy_spec(name, custom)
    if spec is None:
        return RandomPolicy(rng) if name == RANDOM else RoundRobinPolicy(rng)
    if lora and not any(s.type == LoraAffinityScorer.type_name for s in spec.scorers):
        spec = spec.model_copy(update={"scorers": [
            *spec.scorers, PluginSpec(type=LoraAffinityScorer.type_name,
                                      weight=LORA_AFFINITY_WEIGHT)]})
    where = f"policies.{name}" if name in (custom or {}) else f"<built-in policy {name}>"
    filters: list[Filter] = [_plugin(FILTERS, f, f"{where}.filters[{i}]")
                             for i, f in enumerate(spec.filters)]
    scorers: list[tuple[Scorer, float]] = [
        (_plugin(SCORERS, s, f"{where}.scorers[{i}]", kv_index), s.weight)
        for i, s in enumerate(spec.scorers)]
    guard = spec.load_guard
    return Pipeline(filters, scorers, rng,
                    LoadGuard(guard.abs_threshold, guard.rel_threshold) if guard else None,
                    CacheTrust(spec.cache_trust_floor))


def _plugin(table: dict[str, Any], spec: PluginSpec, where: str,
            kv_index: KVBlockIndex | None = None) -> Any:
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
    if spec.type in _USES_KV_INDEX:
        # Without events the index stays empty and the scorer has no opinion; the config
        # check names models whose replicas publish none.
        return cls(params, kv_index or KVBlockIndex())
    return cls(params)
