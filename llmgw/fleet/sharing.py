"""Several gateways serving one fleet (one per node of a Ray cluster, behind a load
balancer): one owns it, the others follow.

The owner runs the fleet as a single gateway does and publishes its launched replicas
(ready and draining) through the directory every ``RENEW_S`` with its lease. A follower
serves the same models: attached engines from its own config, launched replicas as the
owner published them (draining ones leave its rotation too); it launches nothing. When
the owner stops renewing (it stopped, or died: ``LEASE_S``), a follower takes over: it
adopts the running replicas from the backend, as a restarted owner would, and owns the
fleet from then on. Routing memory that is not derived from the engines (in-flight
counts, the approximate prefix index) stays per gateway.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from llmgw.placement.base import Directory
from llmgw.types import ReplicaAddress

if TYPE_CHECKING:
    from llmgw.fleet.controller import Fleet

log = logging.getLogger("llmgw.fleet")
RENEW_S = 1.0
_WATCH_S = 2.0


def members(fleet: Fleet) -> list[dict[str, Any]]:
    """The owner's launched replicas, as the directory keeps them."""
    launched = {m.name for m in fleet.config.models if m.launched}
    out = []
    for model in sorted(launched & fleet.gateway.models):
        for replica in fleet.gateway.pool.replicas(model):
            address = replica.address
            if replica.state in ("ready", "draining") and address is not None:
                out.append({"id": replica.id, "model": model, "role": replica.role,
                            "version": replica.version, "state": replica.state,
                            "url": address.url, "kv_events": address.kv_events,
                            "bootstrap_port": address.bootstrap_port})
    return out


def mirror(fleet: Fleet, published: list[dict[str, Any]]) -> None:
    """Make this follower's launched replicas what the owner published."""
    gateway = fleet.gateway
    for model in (m for m in fleet.config.models if m.launched):
        if model.name not in gateway.models:
            continue
        wanted = {(m["id"], m["url"]): m for m in published if m["model"] == model.name}
        for replica in gateway.pool.replicas(model.name):
            entry = wanted.pop((replica.id, replica.engine.url), None)
            if entry is None:
                gateway.unwire(replica.id)
            elif entry["state"] == "draining":
                replica.state = "draining"
        for entry in wanted.values():
            if gateway.pool.get(entry["id"]) is not None:  # same id, another address
                gateway.unwire(entry["id"])
            address = ReplicaAddress(entry["id"], entry["url"], entry["kv_events"],
                                     entry["bootstrap_port"])
            # The owner just saw it answer; this gateway's health loop checks it too.
            replica = gateway.wire(model.name, address, entry["role"], entry["version"],
                                   healthy=True)
            if entry["state"] == "draining":
                replica.state = "draining"


async def lead(fleet: Fleet, directory: Directory) -> None:
    """The owner's lease: renewed with the members every ``RENEW_S``."""
    while True:
        try:
            if not await directory.claim(members(fleet)):
                log.error("another gateway took this fleet's lease (this one stalled for "
                          "longer than the lease); it keeps serving what it has")
        except Exception:  # the directory restarts with its node; renew again next time
            log.exception("renewing the fleet lease failed")
        await asyncio.sleep(RENEW_S)


async def follow(fleet: Fleet, directory: Directory) -> None:
    """Mirror the owner's members until the lease is free, then take over."""
    generation = -1
    while True:
        try:
            if await directory.claim(None):
                log.info("the fleet's owner is gone: this gateway takes it over")
                await fleet.take_over()
                return
            generation, published = await directory.watch(generation, _WATCH_S)
            mirror(fleet, published)
        except Exception:
            log.exception("following the fleet's owner failed; retrying")
            await asyncio.sleep(RENEW_S)
