"""Reload as a plan: a pure function of the running config and the new one.

What each model needs, by what changed:

- ``add``: a new model: its replicas start, then it is served.
- ``remove``: gone from the config: it stops taking requests, its replicas drain, stop.
- ``roll``: anything its engines are started with (engine, model, launch, engine_args,
  served name, LoRA limits, a PD pool's flags, what a replica asks a Ray cluster for):
  rolling replacement, ``max_surge`` new replicas at a time, each old one drained once a
  new one serves.
- ``scale``: replica counts and autoscaling bounds: the pool's target moves.
- ``attach``: attached engines' URLs: members added and drained.
- ``update``: routing, policies, timeouts, limits, LoRA settings, PD thresholds: applied
  in place around the same replicas.

Changes that need a new listening socket or process (``server.host``/``port``/``tls``,
``server.state_dir``, the top-level ``placement``) cannot be applied while running: the
plan refuses them, and the gateway keeps its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llmgw.config import ConfigError, GatewayConfig, ModelConfig
from llmgw.fleet.version import replica_version
from llmgw.placement.commands import launch_roles

Action = Literal["add", "remove", "roll", "scale", "attach", "update"]
# Server settings a running gateway cannot take on: it would need a new socket / process.
RESTART_ONLY = ("host", "port", "state_dir", "tls", "keep_alive_s")
# Model keys that only size pools; their replicas stay.
_COUNT_KEYS = frozenset({"replicas", "autoscaling", "rollout"})
# Model keys that decide replicas' membership for attached engines.
_ATTACH_KEYS = frozenset({"url", "kv_events_url"})
# Model keys that reach only the engine process (a roll), not the gateway's group.
_LAUNCH_ONLY = frozenset({"launch", "engine_args", "startup_timeout_s", "placement"})


@dataclass(frozen=True, slots=True)
class ModelPlan:
    model: str
    actions: tuple[Action, ...]
    changed: tuple[str, ...] = ()  # the YAML keys that differ, for the operator

    def as_dict(self) -> dict[str, object]:
        return {"model": self.model, "actions": list(self.actions),
                "changed": list(self.changed)}


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    models: tuple[ModelPlan, ...]
    changed: tuple[str, ...] = field(default=())  # top-level keys (health, aliases, ...)

    @property
    def empty(self) -> bool:
        return not self.models and not self.changed

    def of(self, model: str) -> ModelPlan | None:
        return next((m for m in self.models if m.model == model), None)

    def as_dict(self) -> dict[str, object]:
        return {"models": [m.as_dict() for m in self.models], "changed": list(self.changed)}


def plan_reload(old: GatewayConfig, new: GatewayConfig) -> ReloadPlan:
    """Raises ConfigError for a change that only a restart can apply."""
    for key in RESTART_ONLY:
        if getattr(old.server, key) != getattr(new.server, key):
            raise ConfigError(f"server.{key}: cannot change while the gateway runs "
                              f"({getattr(old.server, key)!r} -> "
                              f"{getattr(new.server, key)!r}); restart the gateway")
    if old.placement != new.placement:  # the backend and its cluster are chosen at start
        raise ConfigError("placement: cannot change while the gateway runs; restart the "
                          "gateway (on Ray the engines keep running and are adopted)")
    before = {m.name: m for m in old.models}
    after = {m.name: m for m in new.models}
    changed_policies = {name for name in {*old.policies, *new.policies}
                        if old.policies.get(name) != new.policies.get(name)}
    models = [ModelPlan(name, ("remove",)) for name in before if name not in after]
    for name, model in after.items():
        if name not in before:
            models.append(ModelPlan(name, ("add",)))
            continue
        plan = _model_plan(before[name], model, changed_policies)
        if plan is not None:
            models.append(plan)
    top = tuple(key for key in ("server", "health", "aliases", "policies", "auth")
                if getattr(old, key) != getattr(new, key))
    return ReloadPlan(tuple(models), top)


def _model_plan(old: ModelConfig, new: ModelConfig,
                changed_policies: set[str]) -> ModelPlan | None:
    changed = [key for key in type(new).model_fields if getattr(old, key) != getattr(new, key)]
    changed += [f"policies.{name}" for name in sorted(new.policy_names & changed_policies)]
    if not changed:
        return None
    if old.launched != new.launched:  # attached <-> launched: a different model
        return ModelPlan(new.name, ("remove", "add"), tuple(changed))
    actions: list[Action] = []
    if new.launched and _versions(old) != _versions(new):
        actions.append("roll")
    if any(key in _COUNT_KEYS for key in changed) or _pool_counts(old) != _pool_counts(new):
        actions.append("scale")
    if not new.launched and any(key in _ATTACH_KEYS for key in changed):
        actions.append("attach")
    if any(key not in _COUNT_KEYS | _ATTACH_KEYS | _LAUNCH_ONLY for key in changed):
        actions.append("update")
    return ModelPlan(new.name, tuple(actions), tuple(changed))


def _versions(model: ModelConfig) -> list[str]:
    return [replica_version(model, role) for role in launch_roles(model)]


def _pool_counts(model: ModelConfig) -> object:
    pd = model.disaggregation
    if pd is None:
        return None
    return [(p.replicas, p.autoscaling, p.url) for _, p in pd.pools]
