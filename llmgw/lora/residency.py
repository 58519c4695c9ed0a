"""Which adapters each replica of one base model holds, and getting an adapter onto a
replica: loaded on demand through the engine's own API, one load per (replica, adapter)
at a time however many requests wait for it, the coldest idle adapter evicted when the
replica is full. The belief is checked against the engine's own listing, so a restarted
engine (which holds none) or an out-of-band change cannot leave it wrong.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping

from llmgw.engines.adapters import AdapterClient, AdapterLoadError
from llmgw.errors import AdapterLoadFailed, UpstreamError, UpstreamTimeout
from llmgw.lora.catalog import Adapter
from llmgw.lora.rates import AdapterRates
from llmgw.metrics import LoraMetrics
from llmgw.pool import Replica

log = logging.getLogger("llmgw.lora")


class SlotsBusy(Exception):
    """Every adapter slot of the replica serves requests right now; try another."""


class Lease:
    """A request's hold on a resident adapter: it is not evicted until released."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


class AdapterResidency:
    def __init__(self, model: str, replicas: list[Replica],
                 clients: Mapping[str, AdapterClient], slots: int, rates: AdapterRates,
                 metrics: LoraMetrics, known: Callable[[], list[str]], *,
                 failure_cooldown_s: float, load_timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model, self.slots, self.rates, self.metrics = model, slots, rates, metrics
        self._replicas = {r.id: r for r in replicas}
        self._clients = dict(clients)
        self._known = known  # every adapter name of this base, for the residency gauges
        self._failure_cooldown_s, self._load_timeout_s = failure_cooldown_s, load_timeout_s
        self._clock = clock
        # replica -> adapters held, least recently used first.
        self._resident: dict[str, OrderedDict[str, None]] = {r: OrderedDict() for r in clients}
        self._loading: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reserved: Counter[str] = Counter()  # loads in progress per replica
        self._in_use: Counter[tuple[str, str]] = Counter()
        self._changes: Counter[str] = Counter()  # belief changes per replica
        self._freed: dict[str, asyncio.Event] = {}  # set when an adapter goes idle
        self._failed: dict[str, tuple[float, str]] = {}  # adapter -> (until, message)
        for replica in replicas:
            replica.max_adapters = slots

    def resident(self, replica_id: str) -> frozenset[str]:
        return frozenset(self._resident.get(replica_id, ()))

    def holders(self, adapter: str) -> list[str]:
        return [rid for rid, held in self._resident.items() if adapter in held]

    def request_fields(self, adapter: str) -> dict[str, str]:
        return next(iter(self._clients.values())).request_fields(adapter)

    async def ensure(self, replica_id: str, adapter: Adapter, reason: str = "demand") -> Lease:
        """Return once ``adapter`` is resident on the replica, holding it there until the
        lease is released. Raises AdapterLoadFailed, SlotsBusy, or an UpstreamError when
        the engine cannot be reached."""
        failure = self._failed.get(adapter.name)
        if failure is not None and failure[0] > self._clock():
            raise AdapterLoadFailed(failure[1], param="model")
        held = self._resident[replica_id]
        key = (replica_id, adapter.name)
        # Held from before the wait: between the load finishing and this waiter resuming,
        # another load must not pick the adapter as its eviction victim.
        self._in_use[key] += 1
        lease = Lease(lambda: self._release(key))
        if adapter.name not in held:
            task = self._loading.get(key)
            if task is None:
                task = self._loading[key] = asyncio.create_task(
                    self._load(replica_id, adapter, reason), name=f"lora-load-{adapter.name}")
                # Routing sees it as resident from now on: concurrent requests for the
                # adapter follow this one and wait for the same load.
                self._publish(replica_id)
            started = self._clock()
            try:
                # Shielded: a waiter that gives up (client gone) must not cancel the load
                # the other waiters share.
                await asyncio.shield(task)
            except BaseException:
                lease.release()
                raise
            if reason == "demand":
                self.metrics.load_wait.observe(self._clock() - started)
                self.rates.waited(adapter.name, self._clock())
        held.move_to_end(adapter.name)
        return lease

    def _release(self, key: tuple[str, str]) -> None:
        self._in_use[key] -= 1
        if self._in_use[key] <= 0:
            del self._in_use[key]
            freed = self._freed.get(key[0])
            if freed is not None:
                freed.set()

    async def _load(self, replica_id: str, adapter: Adapter, reason: str) -> None:
        try:
            # No await between the slot check, the victim's removal and the reservation:
            # they happen atomically with respect to other loads.
            held = self._resident[replica_id]
            victim = None
            deadline = self._clock() + self._load_timeout_s
            while len(held) + self._reserved[replica_id] >= self.slots:
                victim = self._victim(replica_id)
                if victim is not None:
                    del held[victim]
                    self._publish(replica_id)
                    break
                # Every slot serves requests: wait for one to finish (bounded), then
                # look again; other loads may have taken or freed slots meanwhile.
                freed = self._freed.setdefault(replica_id, asyncio.Event())
                freed.clear()
                try:
                    async with asyncio.timeout(max(0.0, deadline - self._clock())):
                        await freed.wait()
                except TimeoutError:
                    raise SlotsBusy(f"all {self.slots} adapter slots of {replica_id} stayed "
                                    f"busy for {self._load_timeout_s}s") from None
            self._reserved[replica_id] += 1
            try:
                client = self._clients[replica_id]
                if victim is not None:
                    await client.unload(victim)
                    self.metrics.evicted(victim)
                    log.info("evicted adapter %s from %s", victim, replica_id)
                started = self._clock()
                try:
                    async with asyncio.timeout(self._load_timeout_s):
                        await client.load(adapter.name, adapter.source)
                except AdapterLoadError as exc:
                    if await self._engine_was_full(replica_id):
                        self.metrics.loaded(adapter.name, False, reason)
                        raise UpstreamError(f"replica {replica_id} had no free adapter slot "
                                            f"(residency corrected): {exc}") from None
                    message = f"adapter '{adapter.name}' failed to load on {replica_id}: {exc}"
                    self._failed[adapter.name] = (
                        self._clock() + self._failure_cooldown_s, message)
                    self.metrics.loaded(adapter.name, False, reason)
                    log.warning("%s", message)
                    raise AdapterLoadFailed(message, param="model") from None
                except TimeoutError:
                    self.metrics.loaded(adapter.name, False, reason)
                    raise UpstreamTimeout(f"adapter '{adapter.name}' did not load on "
                                          f"{replica_id} within {self._load_timeout_s}s") from None
                self.metrics.load_duration.observe(self._clock() - started)
                self.metrics.loaded(adapter.name, True, reason)
                self._failed.pop(adapter.name, None)
                held[adapter.name] = None
                self._publish(replica_id)
            finally:
                self._reserved[replica_id] -= 1
        finally:
            self._loading.pop((replica_id, adapter.name), None)
            self._publish(replica_id)

    async def _engine_was_full(self, replica_id: str) -> bool:
        """A refused load is the adapter's fault unless the engine turns out to hold more
        than the gateway believed (changed behind its back): then the belief is corrected
        and the load may be retried, rather than the adapter put in the cooldown."""
        listed = await self._clients[replica_id].loaded()
        held = self._resident[replica_id]
        unknown = (listed or set()) - set(held)
        if listed is None or len(listed) < self.slots or not unknown:
            return False
        self.metrics.drift(replica_id, len(unknown))
        for name in unknown:
            held[name] = None
            held.move_to_end(name, last=False)
        self._publish(replica_id)
        return True

    def _victim(self, replica_id: str) -> str | None:
        """The coldest adapter no request is using; least recently used among equals."""
        now = self._clock()
        idle = [(self.rates.rate(name, now), position, name)
                for position, name in enumerate(self._resident[replica_id])
                if self._in_use[(replica_id, name)] == 0]
        return min(idle)[2] if idle else None

    async def unload_everywhere(self, name: str) -> None:
        """An adapter removed from the catalog leaves every replica (once idle there:
        requests still running on it finish first)."""
        for replica_id, held in self._resident.items():
            if name in held and self._in_use[(replica_id, name)] == 0:
                del held[name]
                self._publish(replica_id)
                await self._clients[replica_id].unload(name)
        self._failed.pop(name, None)

    def forget(self, replica_id: str) -> None:
        """The replica went down: a restarted engine holds no runtime-loaded adapter."""
        if self._resident[replica_id]:
            self._resident[replica_id].clear()
            self._publish(replica_id)

    async def reconcile(self, replica_id: str) -> None:
        """Replace the belief with the engine's own listing, where it has one. A listing
        taken while the gateway itself changed the replica (a load or eviction between
        asking and answering) is stale on arrival: skipped, the next round checks again."""
        changes = self._changes[replica_id]
        loaded = await self._clients[replica_id].loaded()
        if loaded is None or self._changes[replica_id] != changes \
                or self._reserved[replica_id]:
            return
        busy = {name for rid, name in self._loading if rid == replica_id}
        held = self._resident[replica_id]
        believed = set(held) - busy
        drift = len(believed ^ (loaded - busy))
        if drift:
            log.warning("adapter residency of %s corrected: believed %s, engine lists %s",
                        replica_id, sorted(believed), sorted(loaded))
            self.metrics.drift(replica_id, drift)
            for name in believed - loaded:
                del held[name]
            for name in sorted(loaded - believed - busy):
                held[name] = None
                held.move_to_end(name, last=False)  # unknown recency: evict first
            self._publish(replica_id)

    def _publish(self, replica_id: str) -> None:
        self._changes[replica_id] += 1
        adapters = self.resident(replica_id)
        loading = frozenset(name for rid, name in self._loading if rid == replica_id)
        self._replicas[replica_id].adapters = adapters | loading
        self.metrics.residency(replica_id, adapters, self._known())
