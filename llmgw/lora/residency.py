"""Which adapters each replica of one base model holds, and getting an adapter onto a
replica: loaded on demand through the engine's own API, one load per (replica, adapter
name) at a time however many requests wait for it, the coldest idle adapter evicted when
the replica is full. The belief is checked against the engine's own listing, so a
restarted engine (which holds none) or an out-of-band change cannot leave it wrong.

Residency is kept by identity, not by name: an engine knows one adapter per name, and a
name removed and registered again (a new version of an adapter) is another adapter
(``Adapter.generation``). A request never runs on a namesake of other weights: the old
one is unloaded first, once no request uses it. A removed adapter gets no new request and
leaves each replica as soon as its last request there ends (or its load in flight ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from llmgw.engines.adapters import AdapterClient, AdapterLoadError
from llmgw.errors import AdapterLoadFailed, ModelNotFound, UpstreamError, UpstreamTimeout
from llmgw.lora.catalog import Adapter, AdapterCatalog
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


@dataclass(frozen=True, slots=True)
class _Load:
    adapter: Adapter
    task: asyncio.Task[None]


class AdapterResidency:
    """One base model's replicas and the adapters they hold. Runs on one event loop;
    nothing here is thread-safe. ``catalog`` says which adapters are current."""

    def __init__(self, model: str, client: Callable[[Replica], AdapterClient], slots: int,
                 rates: AdapterRates, metrics: LoraMetrics, catalog: AdapterCatalog, *,
                 failure_cooldown_s: float, load_timeout_s: float,
                 request_field: str = "model",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.request_field = request_field
        self.model, self.slots, self.rates, self.metrics = model, slots, rates, metrics
        # Replicas join and leave at run time (add_replica / remove_replica).
        self._replicas: dict[str, Replica] = {}
        self._client = client
        self._clients: dict[str, AdapterClient] = {}
        self._catalog = catalog
        self._failure_cooldown_s, self._load_timeout_s = failure_cooldown_s, load_timeout_s
        self._clock = clock
        # replica -> name -> the adapter the engine holds under that name, least recently
        # used first; None: the engine lists it but its weights are unknown.
        self._resident: dict[str, OrderedDict[str, Adapter | None]] = {}
        # What this gateway loaded where: outlives a health blip (forget), so a listing
        # afterwards is trusted for what it was.
        self._loaded_as: dict[tuple[str, str], Adapter] = {}
        self._loading: dict[tuple[str, str], _Load] = {}
        self._unloading: dict[tuple[str, str], asyncio.Task[bool]] = {}
        self._reserved: Counter[str] = Counter()  # loads in progress per replica
        self._in_use: Counter[tuple[str, Adapter]] = Counter()
        self._changes: Counter[str] = Counter()  # belief changes per replica
        self._freed: dict[str, asyncio.Event] = {}  # set when an adapter goes idle
        self._failed: dict[Adapter, tuple[float, str]] = {}  # adapter -> (until, message)

    def add_replica(self, replica: Replica) -> None:
        """A replica joined: it holds nothing the gateway knows of (the listing on the
        next reconcile says what it really holds)."""
        self._replicas[replica.id] = replica
        self._clients[replica.id] = self._client(replica)
        self._resident[replica.id] = OrderedDict()
        replica.max_adapters = self.slots
        self._publish(replica.id)

    def remove_replica(self, replica_id: str) -> None:
        """A replica left for good (drained, so no request uses an adapter there): loads
        and unloads still under way on it stop, and nothing of it is kept."""
        for (rid, _), load in list(self._loading.items()):
            if rid == replica_id:
                load.task.cancel()
        for (rid, _), task in list(self._unloading.items()):
            if rid == replica_id:
                task.cancel()
        for table in (self._replicas, self._clients, self._resident, self._changes,
                      self._reserved, self._freed):
            table.pop(replica_id, None)
        for loaded in [k for k in self._loaded_as if k[0] == replica_id]:
            del self._loaded_as[loaded]
        for used in [k for k in self._in_use if k[0] == replica_id]:
            del self._in_use[used]

    def current(self, adapter: Adapter) -> bool:
        """Still in the catalog as this very registration."""
        return self._catalog.get(adapter.name) == adapter

    def resident(self, replica_id: str) -> frozenset[str]:
        """The current adapters the replica holds, by name: what routing sees."""
        return frozenset(name for name, held in self._resident.get(replica_id, {}).items()
                         if held is not None and self.current(held))

    def holders(self, adapter: str) -> list[str]:
        return [rid for rid in self._resident if adapter in self.resident(rid)]

    def request_fields(self, adapter: str) -> dict[str, str]:
        """How a request names its adapter (the engine type decides: one per model)."""
        return {self.request_field: adapter}

    async def ensure(self, replica_id: str, adapter: Adapter, reason: str = "demand") -> Lease:
        """Return once ``adapter`` is resident on the replica, holding it there until the
        lease is released. Raises ModelNotFound (removed), AdapterLoadFailed, SlotsBusy, or
        an UpstreamError when the engine cannot be reached."""
        self._check_usable(adapter)
        key = (replica_id, adapter)
        # Held from before the wait: between the load finishing and this waiter resuming,
        # another load must not pick the adapter as its eviction victim.
        self._in_use[key] += 1
        lease = Lease(lambda: self._release(key))
        started = self._clock()
        try:
            loaded = await self._until_held(replica_id, adapter, reason)
        except BaseException:
            lease.release()
            raise
        if loaded and reason == "demand":
            self.metrics.load_wait.observe(self._clock() - started)
            self.rates.waited(adapter.name, self._clock())
        self._resident[replica_id].move_to_end(adapter.name)
        return lease

    def _check_usable(self, adapter: Adapter) -> None:
        if not self.current(adapter):  # resolved before a DELETE, arriving after it
            raise ModelNotFound(f"The adapter '{adapter.name}' was removed.", param="model")
        failure = self._failed.get(adapter)
        if failure is not None and failure[0] > self._clock():
            raise AdapterLoadFailed(failure[1], param="model")

    async def _until_held(self, replica_id: str, adapter: Adapter, reason: str) -> bool:
        """Wait until the engine holds this very adapter; True when that took a load."""
        held = self._resident[replica_id]
        waited = False
        while held.get(adapter.name) != adapter:
            waited = True
            load = self._loading.get((replica_id, adapter.name))
            if load is None:
                load = self._start_load(replica_id, adapter, reason)
            # Shielded: a waiter that gives up (client gone) must not cancel the load the
            # other waiters share.
            if load.adapter == adapter:
                await asyncio.shield(load.task)
            else:  # the name's previous adapter is loading: wait it out, then replace it
                with contextlib.suppress(Exception):
                    await asyncio.shield(load.task)
        return waited

    def _start_load(self, replica_id: str, adapter: Adapter, reason: str) -> _Load:
        task = asyncio.create_task(self._load(replica_id, adapter, reason),
                                   name=f"lora-load-{adapter.name}")
        task.add_done_callback(_retrieve)
        load = self._loading[(replica_id, adapter.name)] = _Load(adapter, task)
        # Routing sees it as resident from now on: concurrent requests for the adapter
        # follow this one and wait for the same load.
        self._publish(replica_id)
        return load

    def _release(self, key: tuple[str, Adapter]) -> None:
        self._in_use[key] -= 1
        if self._in_use[key] > 0:
            return
        del self._in_use[key]
        freed = self._freed.get(key[0])
        if freed is not None:
            freed.set()
        self._drop_if_retired(*key)

    async def _load(self, replica_id: str, adapter: Adapter, reason: str) -> None:
        try:
            victim = await self._make_room(replica_id, adapter)
            self._reserved[replica_id] += 1
            try:
                if victim is not None:
                    await self._unloaded(replica_id, victim)
                    self.metrics.evicted(victim)
                    log.info("evicted adapter %s from %s", victim, replica_id)
                # The engine knows one adapter per name: a namesake leaves first.
                await self._unloaded(replica_id, adapter.name)
                await self._load_on_engine(replica_id, adapter, reason)
            finally:
                self._reserved[replica_id] -= 1
        finally:
            self._loading.pop((replica_id, adapter.name), None)
            self._publish(replica_id)
            self._drop_if_retired(replica_id, adapter)  # removed while it loaded

    async def _make_room(self, replica_id: str, adapter: Adapter) -> str | None:
        """Clear the adapter's name and a slot for it; returns the name evicted for the
        slot, if any. No await between the last check and the return: the room is taken
        atomically with respect to other loads."""
        held = self._resident[replica_id]
        deadline = self._clock() + self._load_timeout_s
        while True:
            if adapter.name in held and not self._busy(replica_id, held[adapter.name]):
                self._drop(replica_id, adapter.name)  # other weights under the name
            if adapter.name not in held:
                if len(held) + self._reserved[replica_id] < self.slots:
                    return None
                victim = self._victim(replica_id)
                if victim is not None:
                    self._drop(replica_id, victim)
                    return victim
            # Every slot (or the namesake) serves requests: wait for one to finish
            # (bounded), then look again; other loads may have taken or freed slots.
            await self._wait_freed(replica_id, deadline)

    async def _wait_freed(self, replica_id: str, deadline: float) -> None:
        freed = self._freed.setdefault(replica_id, asyncio.Event())
        freed.clear()
        try:
            async with asyncio.timeout(max(0.0, deadline - self._clock())):
                await freed.wait()
        except TimeoutError:
            raise SlotsBusy(f"all {self.slots} adapter slots of {replica_id} stayed "
                            f"busy for {self._load_timeout_s}s") from None

    async def _load_on_engine(self, replica_id: str, adapter: Adapter, reason: str) -> None:
        started = self._clock()
        try:
            async with asyncio.timeout(self._load_timeout_s):
                await self._clients[replica_id].load(adapter.name, adapter.source)
        except AdapterLoadError as exc:
            if not await self._loaded_by_another(replica_id, adapter):
                await self._refused(replica_id, adapter, reason, exc)
        except TimeoutError:
            self.metrics.loaded(adapter.name, False, reason)
            raise UpstreamTimeout(f"adapter '{adapter.name}' did not load on "
                                  f"{replica_id} within {self._load_timeout_s}s") from None
        self.metrics.load_duration.observe(self._clock() - started)
        self.metrics.loaded(adapter.name, True, reason)
        self._failed.pop(adapter, None)
        self._resident[replica_id][adapter.name] = adapter
        self._loaded_as[(replica_id, adapter.name)] = adapter
        self._publish(replica_id)

    async def _refused(self, replica_id: str, adapter: Adapter, reason: str,
                       exc: AdapterLoadError) -> NoReturn:
        self.metrics.loaded(adapter.name, False, reason)
        if await self._engine_was_full(replica_id):
            raise UpstreamError(f"replica {replica_id} had no free adapter slot "
                                f"(residency corrected): {exc}") from None
        message = f"adapter '{adapter.name}' failed to load on {replica_id}: {exc}"
        self._failed[adapter] = (self._clock() + self._failure_cooldown_s, message)
        log.warning("%s", message)
        raise AdapterLoadFailed(message, param="model") from None

    async def _loaded_by_another(self, replica_id: str, adapter: Adapter) -> bool:
        """A refused load of an adapter the engine lists already: another gateway sharing
        the replica (a sibling worker, a gateway on the same Ray fleet) loaded it first,
        and vLLM refuses a second load of a name. It is resident, as wanted."""
        listed = await self._clients[replica_id].loaded()
        return listed is not None and adapter.name in listed

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
            held[name] = self._identity(replica_id, name)
            held.move_to_end(name, last=False)
        self._publish(replica_id)
        return True

    def _busy(self, replica_id: str, held: Adapter | None) -> bool:
        return held is not None and self._in_use[(replica_id, held)] > 0

    def _victim(self, replica_id: str) -> str | None:
        """The coldest adapter no request is using, least recently used among equals;
        adapters of unknown or retired weights first."""
        now = self._clock()
        idle = [(self.rates.rate(name, now) if held is not None and self.current(held)
                 else -1.0, position, name)
                for position, (name, held) in enumerate(self._resident[replica_id].items())
                if not self._busy(replica_id, held)]
        return min(idle)[2] if idle else None

    def _drop(self, replica_id: str, name: str) -> None:
        """Off the replica: at once in the belief, on the engine in the background (a
        later load of the name waits for that unload)."""
        del self._resident[replica_id][name]
        self._loaded_as.pop((replica_id, name), None)
        self._publish(replica_id)
        key = (replica_id, name)
        task = asyncio.create_task(self._clients[replica_id].unload(name),
                                   name=f"lora-unload-{name}")
        self._unloading[key] = task
        task.add_done_callback(functools.partial(self._unload_done, key))

    def _unload_done(self, key: tuple[str, str], task: asyncio.Task[bool]) -> None:
        if self._unloading.get(key) is task:
            del self._unloading[key]
        if not task.cancelled() and task.exception() is not None:
            log.warning("unloading adapter %s from %s failed: %s", key[1], key[0],
                        task.exception())

    async def _unloaded(self, replica_id: str, name: str) -> None:
        """Wait for an unload of ``name`` on the replica, if one is under way."""
        task = self._unloading.get((replica_id, name))
        if task is not None:
            await asyncio.shield(task)

    def _drop_if_retired(self, replica_id: str, adapter: Adapter) -> None:
        """A removed adapter leaves the replica once no request there uses it."""
        if replica_id not in self._resident:  # the replica itself left
            return
        if (self._resident[replica_id].get(adapter.name) == adapter
                and not self._busy(replica_id, adapter) and not self.current(adapter)):
            self._drop(replica_id, adapter.name)

    async def retire(self, adapter: Adapter) -> None:
        """``adapter`` left the catalog: it leaves every replica where no request uses it
        now (awaited), the others as their last request there ends, and a load of it in
        flight is undone when it ends. No new request gets it (``ensure`` refuses)."""
        self._failed.pop(adapter, None)
        for replica_id in self._resident:
            self._publish(replica_id)  # routing stops preferring it at once
            self._drop_if_retired(replica_id, adapter)
        pending = [t for (_, name), t in self._unloading.items() if name == adapter.name]
        await asyncio.gather(*pending, return_exceptions=True)  # failures logged by _drop

    async def settle(self) -> None:
        """Wait until no load or unload is under way (a load may end in an unload)."""
        while self._loading or self._unloading:
            await asyncio.gather(*(load.task for load in self._loading.values()),
                                 *self._unloading.values(), return_exceptions=True)

    def forget(self, replica_id: str) -> None:
        """The replica went down: a restarted engine holds no runtime-loaded adapter."""
        if self._resident.get(replica_id):
            self._resident[replica_id].clear()
            self._publish(replica_id)

    async def reconcile(self, replica_id: str) -> None:
        """Replace the belief with the engine's own listing, where it has one. A listing
        taken while the gateway itself changed the replica (a load, eviction or unload
        between asking and answering) is stale on arrival: skipped, the next round checks
        again."""
        client = self._clients.get(replica_id)
        if client is None:  # the replica left
            return
        changes = self._changes[replica_id]
        loaded = await client.loaded()
        if loaded is None or replica_id not in self._resident \
                or self._changes[replica_id] != changes or self._reserved[replica_id]:
            return
        busy = {name for rid, name in [*self._loading, *self._unloading] if rid == replica_id}
        held = self._resident[replica_id]
        believed, listed = set(held) - busy, loaded - busy
        for rid, name in [k for k in self._loaded_as if k[0] == replica_id]:
            if name not in loaded and name not in busy:  # gone from the engine
                del self._loaded_as[(rid, name)]
        drift = len(believed ^ listed)
        if not drift:
            return
        log.warning("adapter residency of %s corrected: believed %s, engine lists %s",
                    replica_id, sorted(believed), sorted(loaded))
        self.metrics.drift(replica_id, drift)
        for name in believed - listed:
            del held[name]
        for name in sorted(listed - believed):
            held[name] = identity = self._identity(replica_id, name)
            held.move_to_end(name, last=False)  # unknown recency: evict first
            if identity is not None:
                self._drop_if_retired(replica_id, identity)
        self._publish(replica_id)

    def _identity(self, replica_id: str, name: str) -> Adapter | None:
        """Which adapter a listed name the belief lacked is: what this gateway loaded
        there last, or a configured one (an engine may start with those, as vLLM's
        --lora-modules); otherwise unknown weights, replaced before any use."""
        loaded = self._loaded_as.get((replica_id, name))
        if loaded is not None:
            return loaded
        configured = self._catalog.get(name)
        if configured is not None and configured.origin == "config" \
                and configured.base == self.model:
            return configured
        return None

    def _publish(self, replica_id: str) -> None:
        if replica_id not in self._replicas:  # a load or unload outlived its replica
            return
        self._changes[replica_id] += 1
        adapters = self.resident(replica_id)
        loading = frozenset(name for (rid, name), load in self._loading.items()
                            if rid == replica_id and self.current(load.adapter))
        replica = self._replicas[replica_id]
        replica.adapters = adapters | loading
        # Routing counts the slots left to current adapters: one held by other weights (a
        # removed adapter still serving, or unknown ones) is no free slot.
        replica.max_adapters = self.slots - (len(self._resident[replica_id]) - len(adapters))
        self.metrics.residency(replica_id, adapters,
                               [a.name for a in self._catalog.for_base(self.model)])


def _retrieve(task: asyncio.Task[None]) -> None:
    """A load whose waiters all left: its outcome was logged where it happened."""
    if not task.cancelled():
        task.exception()
