"""One base model's LoRA multiplexing: its adapters (from the shared catalog), where they
are resident, their request rates, and the background loop that keeps the residency
honest (engine listings) and pre-loads hot adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from llmgw.config import HotnessConfig
from llmgw.errors import GatewayError
from llmgw.lora.catalog import Adapter, AdapterCatalog
from llmgw.lora.hotness import plan_preloads
from llmgw.lora.rates import AdapterRates
from llmgw.lora.residency import AdapterResidency, Lease
from llmgw.metrics import LoraMetrics
from llmgw.pool import Replica

log = logging.getLogger("llmgw.lora")


class LoraGroup:
    def __init__(self, base: str, catalog: AdapterCatalog, residency: AdapterResidency,
                 hotness: HotnessConfig, metrics: LoraMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base, self.catalog, self.residency = base, catalog, residency
        self.rates: AdapterRates = residency.rates
        self._replicas: list[Replica] = []
        self._hotness, self._metrics, self._clock = hotness, metrics, clock
        self._task: asyncio.Task[None] | None = None

    def adapter(self, name: str) -> Adapter | None:
        adapter = self.catalog.get(name)
        return adapter if adapter is not None and adapter.base == self.base else None

    def note_request(self, adapter: Adapter) -> None:
        self.rates.observe(adapter.name, self._clock())
        self._metrics.requested(adapter.name)

    async def ensure(self, replica_id: str, adapter: Adapter) -> Lease:
        return await self.residency.ensure(replica_id, adapter)

    async def remove(self, adapter: Adapter) -> None:
        """``adapter`` left the catalog: off the replicas (each once its requests there
        end), its rate and its gauges gone. A later adapter of the same name starts
        afresh."""
        await self.residency.retire(adapter)
        self.rates.forget(adapter.name)
        self._metrics.forget(adapter.name, [r.id for r in self._replicas])

    def added(self, replica: Replica) -> None:
        """A replica joined the model: it starts holding nothing (as far as we know)."""
        self._replicas.append(replica)
        self.residency.add_replica(replica)

    def removed(self, replica: Replica) -> None:
        if replica in self._replicas:
            self._replicas.remove(replica)
        self.residency.remove_replica(replica.id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"lora-{self.base}")

    def stop_soon(self) -> None:
        """Stop the upkeep loop without waiting (a group replaced by reload)."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug here must not stop the loop for good
                log.exception("LoRA upkeep of %s failed", self.base)
            await asyncio.sleep(self._hotness.interval_s)

    async def tick(self) -> None:
        """One round: residency from the engines' listings, rates exported, hot adapters
        pre-loaded."""
        healthy = []
        for replica in list(self._replicas):
            if replica.healthy:
                healthy.append(replica.id)
                await self.residency.reconcile(replica.id)
            else:
                self.residency.forget(replica.id)
        now = self._clock()
        adapters = self.catalog.for_base(self.base)
        for adapter in adapters:
            self._metrics.rate(adapter.name, self.rates.rate(adapter.name, now))
        if not self._hotness.enabled:
            return
        plan = plan_preloads(adapters, healthy, self.residency.resident, self.residency.slots,
                             self.rates, self._hotness.hot_rate, now)
        results = await asyncio.gather(
            *(self.residency.ensure(p.replica_id, p.adapter, reason="preload") for p in plan),
            return_exceptions=True)
        for preload, result in zip(plan, results, strict=True):
            if isinstance(result, Lease):
                result.release()  # resident now; the slot is free to be used or evicted
                log.info("pre-loaded hot adapter %s on %s", preload.adapter.name,
                         preload.replica_id)
            elif isinstance(result, asyncio.CancelledError):
                continue  # its replica left meanwhile (remove_replica cancels its loads)
            elif not isinstance(result, GatewayError | Exception):
                raise result
