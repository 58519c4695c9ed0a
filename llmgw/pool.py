"""Replicas, their health and their membership: the only owner of per-replica state.

A :class:`Replica` counts its own in-flight requests and health; routing sees only the
frozen :class:`ReplicaView` it hands out. Membership changes at run time: placement
backends (the local launcher, Ray) start replicas and hand them to the pool, and take
them away through a drain. Every table keyed by replica elsewhere (routing indexes,
LoRA residency, KV-event subscriptions, metric series) follows through the
:class:`MembershipListener` each owner registers, so none keeps a replica that left.

Lifecycle of a member::

    starting --add--> ready --drain--> draining --remove--> stopped
                       (in rotation)    (no new requests; in-flight ones finish)

A replica is routable while it is ready, healthy and not ejected as an outlier (its own
requests failing: llmgw.resilience.outlier). Health is checked on an interval:
a refused connection or an error answer takes a replica out at once; a check that only
timed out counts, and ``failure_threshold`` in a row are needed, because a live engine
busy with a huge prompt answers slowly without being down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from llmgw.config.resilience import OutlierConfig
from llmgw.engines.base import Engine, Health
from llmgw.errors import NoReplica
from llmgw.metrics import ReplicaMetrics
from llmgw.resilience.outlier import FailureReason, Outlier, may_eject
from llmgw.types import EngineStats, ReplicaAddress, ReplicaView, Role

log = logging.getLogger("llmgw.pool")

ReplicaState = Literal["starting", "ready", "draining", "stopped"]

# Views kept per replica, one per in-flight count: those of the counts it usually runs at.
_VIEWS_KEPT = 256


class Replica:
    """One engine server behind a model. Mutated only from the event loop thread."""

    __slots__ = ("id", "model", "engine", "role", "_healthy", "in_flight", "metrics", "_stats",
                 "_adapters", "_max_adapters", "state", "version", "address", "timeouts",
                 "outlier", "_idle", "_views", "_ejection_ends")

    def __init__(
        self, id: str, model: str, engine: Engine, metrics: ReplicaMetrics, *,
        role: Role = "mixed", version: str = "", address: ReplicaAddress | None = None,
    ) -> None:
        self.id = id
        self.model = model
        self.engine = engine
        self.role: Role = role
        # In-flight count -> the snapshot routing sees at that count: built once until
        # something else it shows changes (health, engine stats, adapters), since a
        # request costs the same views again and again (bench/overhead.py).
        self._views: dict[int, ReplicaView] = {}
        self._healthy = False
        self.in_flight = 0
        self.metrics = metrics
        self._stats = EngineStats()
        # LoRA adapters the engine holds and its slots, kept by llmgw.lora.residency.
        self._adapters: frozenset[str] = frozenset()
        self._max_adapters = 0
        self.state: ReplicaState = "ready"
        # What the replica was launched from (a digest of its engine settings): a rollout
        # replaces the replicas whose version differs from the config's.
        self.version = version
        # Where it serves, as its launcher reported (KV events, SGLang's bootstrap port).
        self.address = address or ReplicaAddress(id, engine.url)
        self.timeouts = 0  # consecutive health checks that timed out
        # Requests' own failures; the pool sets its config and clock (``add``).
        self.outlier = Outlier()
        self._idle: asyncio.Event | None = None
        metrics.in_flight.set(0)
        metrics.healthy.set(0)
        # Set when ejected and again when the ejection runs out (a timer): a value read
        # at scrape time would not reach the other workers' /metrics (llmgw/workers).
        metrics.ejected.set(0)
        self._ejection_ends: asyncio.TimerHandle | None = None

    @property
    def routable(self) -> bool:
        return self._healthy and self.state == "ready" and self.outlier.admits()

    def view(self) -> ReplicaView:
        view = self._views.get(self.in_flight)
        if view is None:
            view = ReplicaView(
                id=self.id, model=self.model, role=self.role,
                healthy=self._healthy, in_flight=self.in_flight,
                queue_depth=self._stats.waiting, kv_usage=self._stats.kv_usage,
                kv_capacity_tokens=self._stats.kv_capacity_tokens,
                adapters=self._adapters, max_adapters=self._max_adapters,
            )
            if len(self._views) < _VIEWS_KEPT:
                self._views[self.in_flight] = view
        return view

    # What a view shows besides the in-flight count: setting any of it drops the views.
    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def stats(self) -> EngineStats:
        return self._stats

    @property
    def adapters(self) -> frozenset[str]:
        return self._adapters

    @adapters.setter
    def adapters(self, adapters: frozenset[str]) -> None:
        self._adapters = adapters
        self._views.clear()

    @property
    def max_adapters(self) -> int:
        return self._max_adapters

    @max_adapters.setter
    def max_adapters(self, slots: int) -> None:
        self._max_adapters = slots
        self._views.clear()

    def acquire(self) -> None:
        self.in_flight += 1
        self.metrics.add_in_flight(1)
        self.outlier.routed()

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.add_in_flight(-1)
        self.outlier.released()
        if self.in_flight <= 0 and self._idle is not None:
            self._idle.set()

    async def idle(self, timeout_s: float) -> bool:
        """Wait until no request is open on the replica; False when ``timeout_s`` passed
        first."""
        if self.in_flight <= 0:
            return True
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def set_stats(self, stats: EngineStats | None) -> None:
        # Stale numbers are worse than none: a replica whose stats cannot be read
        # routes on the gateway's own in-flight count alone.
        self._stats = stats or EngineStats()
        self._views.clear()
        if stats is not None:
            self.metrics.record_engine(stats)

    def set_health(self, healthy: bool) -> None:
        if healthy:
            self.timeouts = 0
        if healthy != self.healthy:
            log.info("replica %s/%s is %s", self.model, self.id, "up" if healthy else "down")
            self._healthy = healthy
            self._views.clear()
            self.metrics.healthy.set(int(healthy))

    def checked(self, health: Health, failure_threshold: int) -> None:
        """Apply one health check's result."""
        if health == "timeout":
            self.timeouts += 1
            if self.timeouts >= failure_threshold:
                self.set_health(False)
        else:
            self.set_health(health == "ok")
            if health == "ok" and self.outlier.probe_ok():
                log.info("replica %s/%s is back in (health check after ejection)",
                         self.model, self.id)

    def answered(self) -> None:
        """The engine answered a request (a 4xx too: the client's fault, not its)."""
        if self.outlier.answered():
            log.info("replica %s/%s is back in (trial request answered)", self.model, self.id)

    def failed(self, reason: FailureReason | None, siblings: Sequence[Replica]) -> None:
        """A request failed here before any byte; ``siblings``: the model's replicas
        (this one included), for the cap on how many may be out at once."""
        if reason is None or not self.outlier.failed():
            return
        if not may_eject([r.outlier for r in siblings], self.outlier.config.max_ejected_percent):
            log.warning("replica %s/%s keeps failing (%s) but is not ejected: "
                        "max_ejected_percent reached", self.model, self.id, reason)
            return
        seconds = self.outlier.eject()
        self.metrics.ejections(reason).inc()
        self._show_ejection()
        log.warning("replica %s/%s ejected for %.1fs (%s, ejection %d)", self.model, self.id,
                    seconds, reason, self.outlier.ejections)


    def _show_ejection(self) -> None:
        """``llmgw_replica_ejected``: 1 until the ejection's time is up (the replica is
        then half-open), checked again by a timer at that moment."""
        if self._ejection_ends is not None:
            self._ejection_ends.cancel()
            self._ejection_ends = None
        ejected = self.outlier.state == "ejected"
        self.metrics.ejected.set(float(ejected))
        if ejected:
            # A timer may fire a hair before the outlier's clock says so: then again.
            left = max(self.outlier.ejected_for_s(), 0.001)
            self._ejection_ends = asyncio.get_running_loop().call_later(
                left, self._show_ejection)


class MembershipListener(Protocol):
    """Whoever keeps something per replica of a model. Called on the event loop, in
    membership order: ``added`` when a replica enters rotation, ``removed`` once it has
    left for good (drained, or dead and given up). Must not raise."""

    def added(self, replica: Replica) -> None: ...

    def removed(self, replica: Replica) -> None: ...


@dataclass(slots=True)
class Pending:
    """A replica being started: no address yet (a Ray actor learns its own once placed)."""

    id: str
    model: str
    role: Role
    version: str
    since: float


class ReplicaPool:
    """Every replica of every model, with background health and stats loops."""

    def __init__(self, *, interval_s: float, stats_interval_s: float,
                 failure_threshold: int = 3, outlier: OutlierConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._members: dict[str, Replica] = {}
        self._pending: dict[str, Pending] = {}
        # Other gateways send these replicas requests too (fleet.sharing): a drain also
        # waits for the engine to report none open.
        self.shared = False
        self._listeners: dict[str, list[MembershipListener]] = {}
        self._interval = interval_s
        self._stats_interval = stats_interval_s
        self.failure_threshold = failure_threshold
        self.outlier = outlier or OutlierConfig()
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []

    # --- membership -----------------------------------------------------------------

    def watch(self, model: str, listener: MembershipListener) -> None:
        self._listeners.setdefault(model, []).append(listener)

    def unwatch(self, model: str, listener: MembershipListener) -> None:
        listeners = self._listeners.get(model, [])
        if listener in listeners:
            listeners.remove(listener)

    def starting(self, model: str, replica_id: str, role: Role, version: str = "") -> None:
        self._pending[replica_id] = Pending(replica_id, model, role, version, self._clock())

    def start_failed(self, replica_id: str) -> None:
        self._pending.pop(replica_id, None)

    def add(self, replica: Replica) -> None:
        """Put a started replica in rotation (it serves once a health check passes)."""
        if replica.id in self._members:
            raise ValueError(f"replica {replica.id!r} is already a member")
        self._pending.pop(replica.id, None)
        replica.state = "ready"
        replica.outlier.configure(self.outlier, self._clock)
        self._members[replica.id] = replica
        for listener in self._listeners.get(replica.model, ()):
            listener.added(replica)

    async def drain(self, replica_id: str, timeout_s: float) -> bool:
        """Take the replica out of rotation and wait for its open requests and streams to
        finish, up to ``timeout_s``; True when it went idle in time (else the requests
        still open are cut when its engine stops: logged here). It stays a member
        (health-checked, counted) until ``remove``."""
        replica = self._members[replica_id]
        replica.state = "draining"
        started = self._clock()
        if await replica.idle(timeout_s):
            if not self.shared:
                return True
            if await _engine_idle(replica, started + timeout_s, self._clock):
                return True
        log.warning("replica %s/%s still had %d request(s) open after %.0fs of drain",
                    replica.model, replica.id, replica.in_flight, timeout_s)
        return False

    def remove(self, replica_id: str) -> Replica:
        """Forget a member for good; every listener drops what it kept for it."""
        replica = self._members.pop(replica_id)
        replica.state = "stopped"
        for listener in self._listeners.get(replica.model, ()):
            listener.removed(replica)
        return replica

    def get(self, replica_id: str) -> Replica | None:
        return self._members.get(replica_id)

    def replicas(self, model: str) -> list[Replica]:
        return [r for r in self._members.values() if r.model == model]

    def pending(self, model: str) -> list[Pending]:
        return [p for p in self._pending.values() if p.model == model]

    def all(self) -> list[Replica]:
        return list(self._members.values())

    # --- health and stats -----------------------------------------------------------

    def configure(self, *, interval_s: float, stats_interval_s: float,
                  failure_threshold: int, outlier: OutlierConfig | None = None) -> None:
        """New health settings (reload): the loops pick them up on their next round,
        replicas' outlier detection at its next failure."""
        self._interval, self._stats_interval = interval_s, stats_interval_s
        self.failure_threshold = failure_threshold
        self.outlier = outlier or OutlierConfig()
        for replica in self._members.values():
            replica.outlier.configure(self.outlier)

    async def check_all(self) -> None:
        replicas = self.all()
        results = await asyncio.gather(*(r.engine.health() for r in replicas))
        for replica, health in zip(replicas, results, strict=True):
            if replica.state != "stopped":  # removed while its check was in flight
                replica.checked(health, self.failure_threshold)

    async def scrape_all(self) -> None:
        replicas = [r for r in self.all() if r.healthy]
        results = await asyncio.gather(*(r.engine.stats() for r in replicas))
        for replica, stats in zip(replicas, results, strict=True):
            replica.set_stats(stats)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._every(lambda: self._interval, self.check_all),
                                name="health"),
            asyncio.create_task(self._every(lambda: self._stats_interval, self.scrape_all),
                                name="engine-stats"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @staticmethod
    async def _every(interval_s: Callable[[], float],
                     work: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await work()
            except Exception:  # a bug here must not stop the loop for good
                log.exception("%s failed", getattr(work, "__name__", work))
            await asyncio.sleep(interval_s())


class ReplicaWait:
    """Requests for a model that has no routable replica (scaled to zero, or its first
    replica still starting), waiting for one: at most ``limit`` at once, each at most
    ``timeout_s``; beyond either bound the client gets 503 with Retry-After. A waiter that
    leaves (client gone, cancelled) leaves nothing behind."""

    def __init__(self, model: str, limit: int, timeout_s: float) -> None:
        self.model, self.limit, self.timeout_s = model, limit, timeout_s
        self.waiting = 0
        self._arrived: asyncio.Event | None = None
        # Called as a request starts waiting: the fleet decides at once (cold start).
        self.on_wait: Callable[[], None] = lambda: None

    async def wait(self, ready: Callable[[], bool]) -> None:
        if self.waiting >= self.limit:
            raise NoReplica(f"model '{self.model}' has no replica ready and {self.limit} "
                            f"requests already wait for one; retry shortly")
        self.waiting += 1
        try:
            self.on_wait()
            async with asyncio.timeout(self.timeout_s):
                while not ready():
                    if self._arrived is None:
                        self._arrived = asyncio.Event()
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise NoReplica(f"no replica of model '{self.model}' became ready within "
                            f"{self.timeout_s:.0f}s; retry shortly") from None
        finally:
            self.waiting -= 1

    def notify(self) -> None:
        """A replica may have become routable: waiters look again."""
        if self._arrived is not None:
            self._arrived.set()


# Gateways sharing a fleet learn of a drain within a second (fleet.sharing.RENEW_S) and
# the engine's counts are scraped every stats interval: zero is trusted only after this.
_SHARED_SETTLE_S = 3.0


async def _engine_idle(replica: Replica, deadline: float,
                       clock: Callable[[], float]) -> bool:
    """Requests other gateways sent the replica have ended too: its engine reports none
    running or waiting (an engine that reports nothing is taken at its word)."""
    settle = clock() + _SHARED_SETTLE_S
    while clock() < deadline:
        stats = replica.stats
        if clock() >= settle and not (stats.running or 0) + (stats.waiting or 0):
            return True
        # The counts come from the pool's stats scrape; nothing to wait on instead.
        await asyncio.sleep(0.25)
    return False
