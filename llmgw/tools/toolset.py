"""Every tool the gateway serves: what ``/v1/tools``, ``/mcp`` and the tool loop call.

``ToolSet.start`` builds each deployment's replicas (worker processes, started
concurrently through the launcher the composition root gives it, or the in-process
instance) and a health loop; ``call`` validates a call's arguments against the tool's
schema (400 naming the field, before anything runs), sends it to a replica and records
the outcome; ``close`` stops the workers (each finishes the calls it has). Tools do not
change on reload: the set is built once, at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from llmgw.config import GatewayConfig, ToolConfig
from llmgw.context import MAX_DEPTH, CallContext
from llmgw.errors import GatewayError, InvalidRequest, ToolDepthExceeded, ToolNotFound
from llmgw.metrics import Metrics
from llmgw.placement.base import LaunchError, ProcessLauncher
from llmgw.tools.deployment import ToolDeployment
from llmgw.tools.host import ToolHost
from llmgw.tools.replicas import LocalReplica, ToolReplica, WorkerReplica
from llmgw.tools.schema import ArgumentsInvalid, ToolSpec, content_text
from llmgw.tools.worker_spec import new_token, tool_worker_spec

log = logging.getLogger("llmgw.tools")
# GatewayError code -> the outcome label of llmgw_tool_calls.
_OUTCOMES = {"tool_error": "error", "tool_timeout": "timeout", "tool_unavailable":
             "unavailable", "tool_worker_lost": "lost"}


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A call's answer: ``output`` as JSON-able data, ``content`` as a tool message's text."""

    tool: str
    output: Any
    batch_size: int | None

    @property
    def content(self) -> str:
        return content_text(self.output)

    def as_dict(self) -> dict[str, Any]:
        return {"object": "tool.result", "tool": self.tool, "output": self.output,
                "content": self.content}


class ToolSet:
    """Build inside the event loop that serves it; ``specs``: ``check_tools(config)``.
    ``launcher`` starts the worker processes (``replicas: N``; a launcher of their own,
    whose callbacks this set takes) and is closed with it; without one, only in-process
    deployments (``replicas: 0``) can start."""

    def __init__(self, config: GatewayConfig, specs: list[ToolSpec], metrics: Metrics,
                 launcher: ProcessLauncher | None = None) -> None:
        self._config, self._metrics = config, metrics.tools
        self.metrics = metrics.tools
        self.specs = {spec.name: spec for spec in specs}
        self.deployments: dict[str, ToolDeployment] = {}
        self._session: aiohttp.ClientSession | None = None
        self._health: asyncio.Task[None] | None = None
        self._launcher = launcher
        self._workers: dict[str, WorkerReplica] = {}  # by launch id
        if launcher is not None:
            launcher.on_restart = self._restarted
            launcher.on_lost = self._lost
        # Workers require it on their calls; new for every gateway.
        self._token = new_token()
        # Where tools' own calls (llmgw.context) reach this gateway: from a Ray node, at
        # this node's address.
        server = config.server
        host = server.host
        if host in ("0.0.0.0", "::", ""):
            host = launcher.local_address() if launcher is not None else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        self.gateway_url = f"{'https' if server.tls else 'http'}://{host}:{server.port}"

    def openai_tools(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """The OpenAI function tools, in config order (stable: prompt caches hit)."""
        return [spec.openai() for spec in self.specs.values()
                if names is None or spec.name in names]

    async def start(self, *, wait: bool = True) -> None:
        """Raises LaunchError (a worker did not start); started workers are stopped.
        ``wait=False`` (a cluster, where a worker may wait minutes for room, as engines
        do): workers start in the background, again after each failure, and join their
        deployments as they run; calls get 503 ``tool_unavailable`` meanwhile."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            for entry in self._config.tools:
                specs = [s for s in self.specs.values() if s.deployment == entry.name]
                self.deployments[entry.name] = ToolDeployment(
                    entry, specs, await self._replicas(entry, specs, wait), self._metrics)
        except BaseException:
            await asyncio.shield(self.close())
            raise
        self._health = asyncio.create_task(self._health_loop(), name="tool-health")

    async def _replicas(self, entry: ToolConfig, specs: list[ToolSpec],
                        wait: bool) -> list[ToolReplica]:
        if entry.replicas == 0:
            return [LocalReplica(f"{entry.name}-local", await ToolHost.create(entry, specs))]
        assert self._session is not None
        if self._launcher is None:
            raise LaunchError(f"tool {entry.name!r}: workers need a launcher")
        spec = tool_worker_spec(entry, self.gateway_url, self._token)
        workers = [WorkerReplica(rid, spec, self._token, self._launcher, self._session)
                   for rid in (f"{entry.name}-{i}" for i in range(entry.replicas))]
        for worker in workers:  # exported at 0, so a dashboard shows "no restarts"
            self._metrics.restarts.labels(entry.name, worker.id)
        # Registered before they start, so close() stops one that started while another
        # failed.
        self.deployments[entry.name] = ToolDeployment(entry, specs, list(workers),
                                                      self._metrics)
        if not wait:
            for worker in workers:  # known to the launcher's callbacks once it runs
                worker.keep_starting(functools.partial(self._running, worker))
            return list(workers)
        self._workers.update((w.launch_id, w) for w in workers)
        await asyncio.gather(*(w.start() for w in workers))
        return list(workers)

    def _running(self, worker: WorkerReplica) -> None:
        """A worker started in the background runs: the launcher may report it now."""
        self._workers[worker.launch_id] = worker

    def _restarted(self, deployment: str, launch_id: str) -> None:
        """A worker restarted in place (the local launcher)."""
        worker = self._workers.get(launch_id)
        if worker is not None:
            self._metrics.restarts.labels(deployment, worker.id).inc()

    def _lost(self, deployment: str, launch_id: str, why: str) -> None:
        """A worker is gone for good (the Ray launcher: its process or actor died); it is
        started again wherever the cluster has room, under a new launch id."""
        worker = self._workers.pop(launch_id, None)
        if worker is None:
            return
        log.error("tool worker %s lost (%s); starting another", worker.id, why)

        def replaced() -> None:
            self._running(worker)
            self._metrics.restarts.labels(deployment, worker.id).inc()

        worker.lost(replaced)

    async def _health_loop(self) -> None:
        assert self._session is not None
        while True:
            await asyncio.sleep(self._config.health.interval_s)
            for deployment in list(self.deployments.values()):
                with contextlib.suppress(Exception):  # one bad check must not end the loop
                    await deployment.check(self._session, self._config.health.timeout_s)

    def spec(self, name: str) -> ToolSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise ToolNotFound(f"no tool named {name!r}", param="name")
        return spec

    async def call(self, name: str, arguments: object, *, depth: int = 0,
                   authorization: str | None = None) -> ToolResult:
        """Raises GatewayError: ToolNotFound, InvalidRequest (naming the field),
        ToolDepthExceeded, and the errors of ToolDeployment.call. ``depth``: how deep in
        nested tool calls the caller is (llmgw.context); ``authorization``: the caller's
        header, which the tool's own calls to the gateway carry."""
        spec = self.spec(name)
        if depth >= MAX_DEPTH:
            raise ToolDepthExceeded(f"tool {name!r}: called {depth} levels deep through "
                                    f"llmgw.context; the limit is {MAX_DEPTH}")
        context = CallContext(self.gateway_url, depth + 1, authorization)
        start, outcome = time.monotonic(), "ok"
        try:
            try:
                args = spec.validate(arguments)
            except ArgumentsInvalid as exc:
                raise InvalidRequest(exc.message, param=exc.param) from None
            output, size = await self.deployments[spec.deployment].call(
                spec, args.model_dump(mode="json", exclude_unset=True), context)
        except GatewayError as exc:
            outcome = _OUTCOMES.get(exc.code or "", "invalid" if exc.status_code < 500
                                    else "error")
            raise
        finally:
            self._metrics.calls.labels(name, outcome).inc()
            self._metrics.duration.labels(name).observe(time.monotonic() - start)
        if size is not None:
            self._metrics.batch_size.labels(name).observe(size)
        return ToolResult(name, output, size)

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        await asyncio.gather(*(d.stop() for d in self.deployments.values()),
                             return_exceptions=True)
        self.deployments.clear()
        self._workers.clear()
        if self._session is not None:
            await self._session.close()
        if self._launcher is not None:
            await self._launcher.close()
