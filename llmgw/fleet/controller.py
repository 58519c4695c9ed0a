"""The fleet: every model's replicas started, scaled, rolled and retired at run time.

``Fleet`` owns one :class:`Deployment` per launched pool (a model, or one prefill /
decode pool of it) and, where ``autoscaling:`` is set, its :class:`Autoscaler`. A
control loop ticks every ``tick_s``: each autoscaler samples its pool and sets the
target, each deployment reconciles. Attached engines (``url:``) are members from the
start and change only by reload. Reload (``reload.py``) turns a new config into a plan
and applies it here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from llmgw.build import Gateway
from llmgw.config import GatewayConfig, ModelConfig
from llmgw.config.autoscaling import AutoscalingConfig
from llmgw.fleet import sharing
from llmgw.fleet.autoscaler import Autoscaler, sample
from llmgw.fleet.deployment import Deployment
from llmgw.fleet.progress import StartupProgress
from llmgw.fleet.version import replica_version
from llmgw.metrics import FleetMetrics, RecentRates
from llmgw.model_group import ModelGroup
from llmgw.placement.base import Directory, Launcher, RunningReplica
from llmgw.placement.commands import launch_roles, launch_unit
from llmgw.placement.local import attached_addresses
from llmgw.pool import Replica
from llmgw.types import Role

log = logging.getLogger("llmgw.fleet")
# Ray Serve's controller ticks every 0.1 s; engines start in seconds, so a quarter second
# costs nothing in reaction time and a tenth of the wakeups.
TICK_S = 0.25


@dataclass(slots=True)
class ManagedPool:
    deployment: Deployment
    autoscaler: Autoscaler | None


def pool_settings(model: ModelConfig, role: Role) -> tuple[int | None, AutoscalingConfig | None]:
    """A launched pool's fixed replica count, or its autoscaling config."""
    pd = model.disaggregation
    if pd is None:
        return model.replicas, model.autoscaling
    pool = pd.prefill if role == "prefill" else pd.decode
    return pool.replicas, pool.autoscaling


class Fleet:
    def __init__(self, gateway: Gateway, launcher: Launcher, *, tick_s: float = TICK_S,
                 clock: Callable[[], float] = time.monotonic,
                 directory: Directory | None = None) -> None:
        self.gateway, self.launcher = gateway, launcher
        # Shared with other gateways (fleet.sharing): this one owns it, or follows.
        self.directory = directory
        self.owner = directory is None
        gateway.pool.shared = directory is not None
        self.tick_s, self.clock = tick_s, clock
        self.pools: dict[tuple[str, Role], ManagedPool] = {}
        self.metrics = FleetMetrics(gateway.metrics)
        # Launches as they go (`llmgw up` shows them), and recent request and error rates
        # (GET /admin/status).
        self.progress = StartupProgress(clock)
        self.recent = RecentRates(gateway.metrics, clock=clock)
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        launcher.on_restart = gateway.count_restart
        launcher.on_lost = self.lost
        launcher.on_phase = self.progress.phase

    @property
    def config(self) -> GatewayConfig:
        return self.gateway.config

    # --- start and stop -------------------------------------------------------------

    async def start(self, *, wait: bool = True) -> None:
        """Every model's initial replicas, launched at once; a launch that fails stops
        the gateway's start (LaunchError) rather than serving part of the config.
        Replicas still running from an earlier gateway (a Ray cluster's) are adopted
        first: those of the config's version serve at once, those of another version
        serve until their replacements are ready, those of no pool are stopped.

        ``wait=False`` (a cluster, where a replica may wait minutes for a node): serve at
        once and let each pool's reconciler start what is missing, retrying failures
        with backoff; requests get 503 (or wait in a scale-from-zero queue) meanwhile."""
        groups = [self.gateway.add_model(model) for model in self.config.models]
        if self.directory is not None:
            self.owner = await self.directory.claim(None)
        if not self.owner:  # launched replicas come from the owner (sharing.follow)
            await asyncio.gather(*(self._populate(m) for m in self.config.models
                                   if not m.launched))
            for group in groups:
                self._serve(group)
            assert self.directory is not None
            self.spawn(sharing.follow(self, self.directory))
            log.info("following the fleet's owner (another gateway on this namespace)")
            return
        adopted = await self._adopt(await self.launcher.adoptable())
        await asyncio.gather(*(self._populate(model, initial=True, launch=wait,
                                              adopted=adopted.get(model.name, []))
                               for model in self.config.models))
        for group in groups:
            self._serve(group)
        self._lead()

    def _lead(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="fleet")
        if self.directory is not None:
            self.spawn(sharing.lead(self, self.directory))

    async def take_over(self) -> None:
        """A follower becomes the owner: the replicas it mirrored are adopted from the
        backend (their supervision, version and numbering), then managed from here."""
        self.owner = True
        launched = [m for m in self.config.models if m.launched]
        running = await self.launcher.adoptable()
        # Mirrored members leave and adopted ones join in one step: requests never find
        # the pool empty during the takeover.
        for model in launched:
            for replica in self.gateway.pool.replicas(model.name):
                self.gateway.unwire(replica.id)
        adopted = await self._adopt(running)
        await asyncio.gather(*(self._populate(model, initial=False, launch=False,
                                              adopted=adopted.get(model.name, []))
                               for model in launched))
        self._lead()

    async def stop_loop(self) -> None:
        """No more scaling decisions (the gateway is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def close(self) -> None:
        """Stop deciding, stop what is under way, stop every engine (or, on Ray, let go
        of them, and of the fleet's lease so a follower takes over at once)."""
        await self.stop_loop()
        # The lease loop goes first: a renewal sent after the release would take the
        # lease again, and the next gateway would follow a gateway that is gone.
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.directory is not None and self.owner:
            with contextlib.suppress(Exception):
                await self.directory.release()
        for managed in self.pools.values():
            await managed.deployment.close()
        await self.launcher.close()

    async def _adopt(self, running: list[RunningReplica]) -> dict[str, list[str]]:
        """Running replicas that belong to a launched pool of the config join it (the
        replica ids per model); the others are stopped."""
        adopted: dict[str, list[str]] = {}
        leftovers: list[str] = []
        for replica in running:
            model = next((m for m in self.config.models if m.name == replica.model), None)
            if model is None or not model.launched or replica.role not in launch_roles(model):
                leftovers.append(replica.id)
                continue
            self.gateway.wire(model.name, replica.address, replica.role, replica.version,
                              healthy=True)
            adopted.setdefault(model.name, []).append(replica.id)
        if running:
            log.info("adopted %d running replica(s); stopping %d that no pool wants",
                     len(running) - len(leftovers), len(leftovers))
        await asyncio.gather(*(self.launcher.stop(replica_id) for replica_id in leftovers))
        return adopted

    async def _populate(self, model: ModelConfig, *, initial: bool = True,
                        launch: bool = True, adopted: list[str] | None = None) -> None:
        """Attach a model's engines, or launch its pools' first replicas (less those
        adopted) and wait for them (``launch=False``: the reconciler starts them); a
        follower launches nothing."""
        if not model.launched:
            for address, role in zip(attached_addresses(model), model.replica_roles,
                                     strict=True):
                self.gateway.wire(model.name, address, role, version="", healthy=False)
            return
        if not self.owner:
            return
        deployments = [self._manage(model, role) for role in launch_roles(model)]
        for deployment in deployments:
            deployment.adopt(adopted or [])
        if not launch:
            return
        results = await asyncio.gather(*(d.launch_initial() for d in deployments),
                                       return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            return
        if initial:
            raise failure
        log.error("model %s did not start: %s", model.name, failure)

    def _manage(self, model: ModelConfig, role: Role) -> Deployment:
        count, autoscaling = pool_settings(model, role)
        target = autoscaling.start_replicas if autoscaling is not None else (count or 1)
        deployment = Deployment(model, role, replica_version(model, role), target,
                                model.rollout, self.gateway.pool, self, self.clock)
        scaler = Autoscaler(autoscaling, target, self.tick_s, self.clock) \
            if autoscaling is not None else None
        self.pools[(model.name, role)] = ManagedPool(deployment, scaler)
        self.metrics.managed(model.name, role)
        self.metrics.desired(model.name, role, target)
        return deployment

    # --- models added and removed at run time (reload) ------------------------------

    def add_model(self, model: ModelConfig) -> None:
        """Start a new model's replicas; it is served once they are ready (a client
        asking before gets 404, as before the reload)."""
        group = self.gateway.add_model(model)

        async def populate() -> None:
            await self._populate(model, initial=False)
            if model.name in self.gateway.models:  # not removed again meanwhile
                self._serve(group)

        self.spawn(populate())

    def remove_model(self, name: str) -> None:
        """Stop serving ``name`` at once (new requests get 404); its replicas finish what
        they hold (bounded by the rollout drain timeout), then stop."""
        self.gateway.retire_model(name)
        managed = [self.pools.pop(key) for key in list(self.pools) if key[0] == name]
        timeout = managed[0].deployment.rollout.drain_timeout_s if managed else \
            self.config.server.drain_timeout_s

        async def retire_all() -> None:
            replicas = self.gateway.pool.replicas(name)
            for replica in replicas:
                replica.state = "draining"
            await asyncio.gather(*(self._drain_and_retire(r, timeout) for r in replicas))
            self.gateway.forget_model(name)

        self.spawn(retire_all())

    async def _drain_and_retire(self, replica: Replica, timeout_s: float) -> None:
        await self.gateway.pool.drain(replica.id, timeout_s)
        await self.retire(replica)

    def _serve(self, group: ModelGroup) -> None:
        self.watch_waiter(group)
        self.gateway.serve(group)

    def watch_waiter(self, group: ModelGroup) -> None:
        """A request waiting for a replica of the group's model wakes the autoscaler."""
        if group.waiter is not None:
            name = group.name
            group.waiter.on_wait = lambda: self.poke(name)

    def retire_detached(self, replica: Replica) -> None:
        """An attached engine left the config (reload): drain it, then forget it."""
        replica.state = "draining"
        self.spawn(self._drain_and_retire(replica, self.config.server.drain_timeout_s))

    # --- Hands: what deployments ask of the fleet -----------------------------------

    async def launch(self, deployment: Deployment, replica_id: str, ordinal: int) -> None:
        model = deployment.spec
        started = self.clock()
        self.progress.launching(model.name, deployment.role, replica_id)
        try:
            address = await self.launcher.launch(
                replica_id, launch_unit(model, deployment.role, ordinal),
                role=deployment.role, version=deployment.version)
        except BaseException as exc:
            self.metrics.started(model.name, deployment.role, ok=False)
            self.progress.failed(replica_id, "interrupted" if isinstance(
                exc, asyncio.CancelledError) else str(exc) or type(exc).__name__)
            raise
        self.metrics.started(model.name, deployment.role, ok=True,
                             seconds=self.clock() - started)
        self.progress.ready(replica_id)
        if self.pools.get((deployment.model, deployment.role)) is not None:
            self.gateway.wire(model.name, address, deployment.role, deployment.version,
                              healthy=True)
        else:  # the model was removed by a reload while this replica started
            self.gateway.pool.start_failed(replica_id)
            await self.launcher.stop(replica_id)

    def lost(self, model: str, replica_id: str, why: str) -> None:
        """The launcher lost a replica for good (its Ray node died): it leaves the pool
        (requests it held have failed over or ended), and its pool's reconciler starts
        a replacement at once, wherever the backend finds room."""
        replica = self.gateway.pool.get(replica_id)
        if replica is None:
            return  # already retired, or never handed to the pool
        log.error("replica %s of %s lost: %s", replica_id, model, why)
        self.gateway.unwire(replica_id)
        self.metrics.lost(model, replica.role)
        self.tick(model)

    async def retire(self, replica: Replica) -> None:
        self.gateway.unwire(replica.id)
        await self.launcher.stop(replica.id)

    # --- the control loop -----------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                self.tick()
                self.recent.sample()
            except Exception:  # a bug here must not stop scaling for good
                log.exception("fleet tick failed")
            await asyncio.sleep(self.tick_s)

    def tick(self, model: str | None = None) -> None:
        for (name, role), managed in list(self.pools.items()):
            if model is None or name == model:
                self._scale(name, role, managed)
                managed.deployment.reconcile()
        for group in self.gateway.dispatcher.groups.values():
            if group.waiter is not None and group.waiter.waiting and group.routable():
                group.waiter.notify()
        self._report()

    def _report(self) -> None:
        counts: dict[tuple[str, str], dict[str, int]] = {key: {} for key in self.pools}
        pool = self.gateway.pool
        for model in self.gateway.models:
            for replica in pool.replicas(model):
                states = counts.setdefault((model, replica.role), {})
                states[replica.state] = states.get(replica.state, 0) + 1
            for pending in pool.pending(model):
                states = counts.setdefault((model, pending.role), {})
                states["starting"] = states.get("starting", 0) + 1
        queued = {name: g.waiter.waiting for name, g in self.gateway.dispatcher.groups.items()
                  if g.waiter is not None}
        self.metrics.counts(counts, queued)

    def poke(self, model: str) -> None:
        """A request waits for a replica of ``model``: decide now, not at the next tick."""
        self.tick(model)

    def _scale(self, model: str, role: Role, managed: ManagedPool) -> None:
        if managed.autoscaler is None:
            return
        ready = [r for r in self.gateway.pool.replicas(model)
                 if r.role == role and r.state == "ready"]
        group = self.gateway.dispatcher.groups.get(model)
        queued = group.waiter.waiting if group is not None and group.waiter is not None \
            and role != "prefill" else 0
        decision = managed.autoscaler.step(sample(self.clock(), ready, queued),
                                           running=sum(r.healthy for r in ready))
        if decision.direction != "none":
            log.info("autoscaler %s/%s: %d -> %d replicas (%s)", model, role,
                     managed.deployment.target, decision.state.target, decision.reason)
            self.metrics.decided(model, role, decision.direction, decision.reason)
        managed.deployment.target = decision.state.target
        self.metrics.desired(model, role, decision.state.target)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


