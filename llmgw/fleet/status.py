"""What the fleet is doing, as one JSON document (``GET /admin/status``): per model its
pools, each replica's state, the autoscaler's wish and last act, queued requests, the
traffic splits and the last reload."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
        models[name] = {
            "served": group is not None,
            "queued": group.waiter.waiting if group and group.waiter else 0,
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


def _replica(replica: Replica) -> dict[str, Any]:
    return {"id": replica.id, "state": replica.state, "healthy": replica.healthy,
            "in_flight": replica.in_flight, "url": replica.engine.url,
            "version": replica.version, "outlier": replica.outlier.status()}
