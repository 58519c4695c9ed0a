"""Reload: re-read the config files the gateway was started with and apply the change
while traffic flows (SIGHUP, ``POST /admin/reload``).

An invalid config is refused with the same errors ``llmgw check`` prints, and nothing
changes. A valid one becomes a plan (``plan.plan_reload``), logged and returned, then
applied: models added and removed, pools rolled and scaled by their deployments,
everything else swapped in place around the same replicas.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmgw.config import ConfigError, GatewayConfig, ModelConfig, load_config
from llmgw.fleet.autoscaler import Autoscaler
from llmgw.fleet.controller import Fleet, pool_settings
from llmgw.fleet.plan import ModelPlan, ReloadPlan, plan_reload
from llmgw.fleet.version import replica_version
from llmgw.lora.catalog import Adapter
from llmgw.lora.setup import configured_adapters
from llmgw.placement.commands import launch_roles
from llmgw.placement.local import attached_addresses

log = logging.getLogger("llmgw.reload")


@dataclass(slots=True)
class ReloadRecord:
    at: float
    ok: bool
    plan: ReloadPlan | None = None
    error: str | None = None
    history: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"at": self.at, "ok": self.ok, "error": self.error,
                "plan": self.plan.as_dict() if self.plan is not None else None}


class Reloader:
    """``validate`` is what ``llmgw check`` runs (config, registries, launchability, LoRA
    state); it raises ConfigError. ``counted``: whether this process's reloads count in
    ``llmgw_config_reloads_total`` (with workers only the supervisor's do: every process
    reloads, and the metrics of all are summed)."""

    def __init__(self, fleet: Fleet, paths: Sequence[str],
                 validate: Callable[[GatewayConfig], None],
                 overrides: Callable[[GatewayConfig], GatewayConfig] = lambda c: c,
                 counted: bool = True) -> None:
        self.fleet, self.paths, self._validate, self._overrides = fleet, paths, validate, \
            overrides
        self._counted = counted
        self._lock = asyncio.Lock()
        self.last: ReloadRecord | None = None
        # Called with the new config once applied (the app's per-request settings).
        self.listeners: list[Callable[[GatewayConfig], None]] = []

    async def reload(self) -> ReloadPlan:
        """Raises ConfigError, leaving the running config as it was."""
        async with self._lock:
            try:
                new = self._overrides(load_config(self.paths))
                self._validate(new)
                plan = plan_reload(self.fleet.config, new)
            except ConfigError as exc:
                self.last = ReloadRecord(time.time(), False, error=str(exc))
                self._count(ok=False)
                log.error("reload refused, the running config stays:\n%s", exc)
                raise
            log.info("reload plan: %s", plan.as_dict())
            # Demo adapters a new config names are built on first use: not on the loop.
            adapters = await asyncio.to_thread(configured_adapters, new)
            apply(self.fleet, new, plan, adapters)
            for listener in self.listeners:
                listener(new)
            self.last = ReloadRecord(time.time(), True, plan)
            self._count(ok=True)
            return plan

    def _count(self, *, ok: bool) -> None:
        if self._counted:
            self.fleet.metrics.reloaded(ok=ok)


def apply(fleet: Fleet, new: GatewayConfig, plan: ReloadPlan,
          adapters: list[Adapter]) -> None:
    """Make the running fleet serve ``new`` (``adapters``: its configured LoRA adapters).
    Synchronous: whatever takes time (starting, draining) runs in the fleet's tasks and
    deployments."""
    fleet.gateway.reconfigure(new, adapters)
    models = {m.name: m for m in new.models}
    for model_plan in plan.models:
        if "remove" in model_plan.actions:
            fleet.remove_model(model_plan.model)
        if "add" in model_plan.actions:
            fleet.add_model(models[model_plan.model])
        if model_plan.model in models and "add" not in model_plan.actions:
            _change(fleet, models[model_plan.model], model_plan)
    fleet.tick()


def _attach(fleet: Fleet, model: ModelConfig) -> None:
    """An attached model's URLs changed: engines that stay keep their replica (and id),
    new ones join under fresh ids, the ones gone drain and leave."""
    members = [r for r in fleet.gateway.pool.replicas(model.name) if r.state == "ready"]
    kept = {(r.role, r.engine.url) for r in members}
    wanted = list(zip(attached_addresses(model), model.replica_roles, strict=True))
    for replica in members:
        if (replica.role, replica.engine.url) not in {(role, a.url) for a, role in wanted}:
            fleet.retire_detached(replica)
    taken = {r.id for r in fleet.gateway.pool.replicas(model.name)}
    for address, role in wanted:
        if (role, address.url) in kept:
            continue
        replica_id = _fresh_id(address.id, taken)
        taken.add(replica_id)
        fleet.gateway.wire(model.name, dataclasses.replace(address, id=replica_id), role,
                           version="", healthy=False)


def _fresh_id(base: str, taken: set[str]) -> str:
    """``base`` (``demo-1``) unless a member has it; then the next free ordinal."""
    if base not in taken:
        return base
    stem = base.rsplit("-", 1)[0]
    ordinal = 0
    while f"{stem}-{ordinal}" in taken:
        ordinal += 1
    return f"{stem}-{ordinal}"


def _change(fleet: Fleet, model: ModelConfig, plan: ModelPlan) -> None:
    if "update" in plan.actions:
        group = fleet.gateway.replace_group(model)
        fleet.watch_waiter(group)
    if "attach" in plan.actions:
        _attach(fleet, model)
    for role in launch_roles(model) if model.launched else []:
        managed = fleet.pools.get((model.name, role))
        if managed is None:  # a follower: the owning gateway manages its replicas
            continue
        deployment = managed.deployment
        deployment.spec, deployment.rollout = model, model.rollout
        deployment.version = replica_version(model, role)  # "roll": a new version
        count, autoscaling = pool_settings(model, role)
        if autoscaling is None:
            managed.autoscaler = None
            deployment.target = count or 1
        elif managed.autoscaler is None:
            managed.autoscaler = Autoscaler(autoscaling, deployment.target, fleet.tick_s,
                                            fleet.clock)
            managed.autoscaler.reconfigure(autoscaling)
        else:
            managed.autoscaler.reconfigure(autoscaling)
        if managed.autoscaler is not None:
            deployment.target = managed.autoscaler.state.target
