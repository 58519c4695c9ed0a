"""One ``tools:`` entry at run time: its replicas, and how a call picks one.

A call goes to the healthy replica with the fewest calls in flight (ties: the first),
among those below ``max_ongoing_requests``; when all are full it waits for one to free
up, within the call's ``timeout_s``. Once sent, a call is never resent (a tool need not be
idempotent); only a call that could not reach its worker at all tries the next replica.
One event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from llmgw.config import ToolConfig
from llmgw.context import CallContext
from llmgw.errors import ToolTimeout, ToolUnavailable
from llmgw.metrics import ToolFamilies
from llmgw.tools.replicas import NotSent, ToolReplica
from llmgw.tools.schema import ToolSpec


class ToolDeployment:
    def __init__(self, cfg: ToolConfig, specs: list[ToolSpec], replicas: list[ToolReplica],
                 metrics: ToolFamilies) -> None:
        self.cfg, self.specs, self.replicas = cfg, specs, replicas
        self._metrics = metrics
        self._freed = asyncio.Condition()

    @property
    def name(self) -> str:
        return self.cfg.name

    async def call(self, spec: ToolSpec, arguments: dict[str, Any],
                   context: CallContext) -> tuple[Any, int | None]:
        """(output, batch size). Raises the GatewayErrors of llmgw.tools.replicas, plus
        ToolUnavailable and ToolTimeout."""
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                return await self._call(spec, arguments, context)
        except TimeoutError:
            raise ToolTimeout(f"tool {spec.name!r} did not answer within "
                              f"{self.cfg.timeout_s:g}s (timeout_s)") from None

    async def _call(self, spec: ToolSpec, arguments: dict[str, Any],
                    context: CallContext) -> tuple[Any, int | None]:
        tried: set[str] = set()
        while True:
            replica = await self._acquire(tried)
            try:
                return await replica.call(spec, arguments, context)
            except NotSent:
                tried.add(replica.id)
            finally:
                await self._release(replica)

    async def _acquire(self, tried: set[str]) -> ToolReplica:
        async with self._freed:
            while True:
                healthy = [r for r in self.replicas if r.healthy and r.id not in tried]
                if not healthy:
                    raise ToolUnavailable(f"tool deployment {self.name!r} has no healthy "
                                          "replica")
                free = [r for r in healthy if r.in_flight < self.cfg.max_ongoing_requests]
                if free:
                    replica = min(free, key=lambda r: r.in_flight)
                    replica.in_flight += 1
                    self._metrics.in_flight.labels(self.name).inc()
                    return replica
                await self._freed.wait()

    async def _release(self, replica: ToolReplica) -> None:
        async with self._freed:
            replica.in_flight -= 1
            self._metrics.in_flight.labels(self.name).dec()
            self._freed.notify()

    async def check(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """One health check of every replica; a replica that came back wakes waiters."""
        await asyncio.gather(*(r.check(session, timeout_s) for r in self.replicas))
        for replica in self.replicas:
            self._metrics.healthy.labels(self.name, replica.id).set(int(replica.healthy))
        async with self._freed:
            self._freed.notify_all()

    async def set_batch_bounds(self, method: str, bounds: dict[str, Any]) -> None:
        """Every replica's batched ``method`` from its next batch."""
        await asyncio.gather(*(r.set_batch_bounds(method, bounds) for r in self.replicas))

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)
