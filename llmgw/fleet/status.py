"""What the fleet is doing, as one JSON document (``GET /admin/status``, what ``llmgw
status`` prints): per model its engine, routing policies, adapters, pools, each
replica's state, health, load and engine stats, the autoscaler's wish and last act,
queued requests; the traffic splits, recent request and error rates, the last reload."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llmgw.config import ModelConfig
from llmgw.fleet.controller import Fleet, ManagedPool
from llmgw.fleet.reload import Reloader
from llmgw.pool import Pending, Replica


def fleet_status(fleet: Fleet, reloader: Reloader | None = None) -> dict[str, Any]:
    gateway = fleet.gateway
    models: dict[str, Any] = {}
    for name in sorted(gateway.models):
        group = gateway.dispatcher.groups.get(name)
        replicas = gateway.pool.replicas(name)
        pending = gateway.pool.pending(name)
        roles = sorted({r.role for r in replicas} | {p.role for p in pending}
                       | {role for (model, role) in fleet.pools if model == name})
        config = next((m for m in gateway.config.models if m.name == name), None)
        models[name] = {
            "served": group is not None,
            "engine": config.engine if config else None,
            "routing": _routing(config) if config else {},
            "adapters": [a.name for a in group.lora.catalog.for_base(name)]
            if group and group.lora else [],
            "queued": group.waiter.waiting if group and group.waiter else 0,
            "admission": {"in_flight": group.admission.in_flight,
                          "queued": group.admission.queued}
            if group and group.admission else None,
            "pools": {role: _pool(fleet.pools.get((name, role)),
                                  [r for r in replicas if r.role == role],
                                  [p for p in pending if p.role == role], fleet.clock(),
                                  fleet.launcher.phase)
                      for role in roles},
        }
    return {
        "models": models,
        "aliases": {name: split.weights()
                    for name, split in gateway.dispatcher.splits.items()},
        "traffic": fleet.recent.rates(),
        "reload": reloader.last.as_dict() if reloader and reloader.last else None,
        "time": time.time(),
    }


def _pool(managed: ManagedPool | None, replicas: list[Replica], pending: list[Pending],
          now: float, phase: Callable[[str], str | None]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "replicas": [_replica(r) for r in replicas],
        # phase: what a starting replica waits for, e.g. a Ray placement group's resources.
        "starting": [{"id": p.id, "version": p.version, "for_s": round(now - p.since, 1),
                      "phase": phase(p.id)} for p in pending],
    }
    if managed is None:  # attached engines: membership comes from the config
        return entry
    deployment, scaler = managed.deployment, managed.autoscaler
    entry.update(target=deployment.target, version=deployment.version,
                 last_error=deployment.last_error)
    if scaler is not None:
        last, change = scaler.last, scaler.last_change
        entry["autoscaler"] = {
            "desired": scaler.state.target,
            "wanted": last.wanted if last else None,
            "reason": last.reason if last else None,
            "min_replicas": scaler.config.min_replicas,
            "max_replicas": scaler.config.max_replicas,
            "last_change": None if change is None or scaler.last_change_at is None else {
                "direction": change.direction, "reason": change.reason,
                "to": change.state.target, "ago_s": round(now - scaler.last_change_at, 1)},
        }
    return entry


def _routing(model: ModelConfig) -> dict[str, Any]:
    """The live policy (a disaggregated model: one per pool) and the shadow policies."""
    pd = model.disaggregation
    live = {"prefill": pd.prefill.routing, "decode": pd.decode.routing} if pd is not None \
        else {"mixed": model.routing}
    return {"policy": live, "shadow": list(model.shadow)}


def _replica(replica: Replica) -> dict[str, Any]:
    stats = replica.stats  # as last read from the engine's /metrics (None: not reported)
    return {"id": replica.id, "state": replica.state, "healthy": replica.healthy,
            "in_flight": replica.in_flight, "url": replica.engine.url,
            "version": replica.version, "outlier": replica.outlier.status(),
            "engine": {"running": stats.running, "waiting": stats.waiting,
                       "kv_usage": stats.kv_usage},
            "adapters": sorted(replica.adapters)}
