"""Where a tool call runs: a worker process (``WorkerReplica``) or the gateway itself
(``LocalReplica``, ``replicas: 0``). Both count their calls in flight (least-load routing
reads it) and say whether they are healthy.

Worker processes are started and supervised like engines, by the launcher the tool set
was given: the local one restarts a worker in place with backoff when it exits; the Ray
one places each worker in a placement group of its own and reports it lost when its
process or actor dies, and the worker is then started again elsewhere (``lost``). A call
whose worker goes away fails with ``ToolWorkerLost`` and is never resent: a tool need not
be idempotent. Only a call that never reached a worker (connection refused) may go to
another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
import orjson

from llmgw.context import CallContext, enter, leave
from llmgw.errors import InvalidRequest, ToolError, ToolWorkerLost
from llmgw.placement.base import LaunchError, ProcessLauncher
from llmgw.placement.spec import ProcessSpec
from llmgw.tools.host import ToolHost, ToolRaised
from llmgw.tools.schema import ArgumentsInvalid, ToolSpec
from llmgw.tools.worker_spec import TOKEN_HEADER

log = logging.getLogger("llmgw.tools")
_MAX_BACKOFF_S = 30.0


class NotSent(Exception):
    """The worker could not be reached: the call never started, another may take it."""


class ToolReplica(Protocol):
    id: str
    in_flight: int
    healthy: bool

    async def call(self, spec: ToolSpec, arguments: dict[str, Any],
                   context: CallContext) -> tuple[Any, int | None]:
        """(output, batch size or None); ``context``: what the tool's code sees as
        llmgw.context. Raises NotSent, ToolError, ToolWorkerLost, InvalidRequest."""
        ...

    async def check(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """Update ``healthy``."""
        ...

    async def set_batch_bounds(self, method: str, bounds: dict[str, Any]) -> None: ...

    async def stop(self) -> None: ...


class LocalReplica:
    """The deployment's one instance inside the gateway."""

    def __init__(self, replica_id: str, host: ToolHost) -> None:
        self.id, self.host = replica_id, host
        self.in_flight, self.healthy = 0, True

    async def call(self, spec: ToolSpec, arguments: dict[str, Any],
                   context: CallContext) -> tuple[Any, int | None]:
        token = enter(context)
        try:
            return await self.host.call(spec.method, arguments)
        except ArgumentsInvalid as exc:
            raise InvalidRequest(exc.message, param=exc.param) from None
        except ToolRaised as exc:
            raise ToolError(f"tool {spec.name!r} failed: {exc}") from None
        finally:
            leave(token)

    async def check(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        return None

    async def set_batch_bounds(self, method: str, bounds: dict[str, Any]) -> None:
        self.host.set_batch_bounds(method, bounds.get("max_batch_size"),
                                   bounds.get("batch_wait_timeout_s"))

    async def stop(self) -> None:
        await self.host.close()


class WorkerReplica:
    """One worker process of a deployment, started by ``launcher`` and reached over HTTP
    with the gateway's token. ``id`` stays; ``launch_id`` (the launcher's name for the
    process) changes when a lost worker is started again."""

    def __init__(self, replica_id: str, spec: ProcessSpec, token: str,
                 launcher: ProcessLauncher, session: aiohttp.ClientSession) -> None:
        self.id, self.spec, self.launch_id = replica_id, spec, replica_id
        self._launcher, self._session = launcher, session
        self._auth = {TOKEN_HEADER: token}
        self.url = ""
        self.in_flight, self.healthy = 0, False
        self._generation = 0
        # Starting a worker in this replica's place (its first, in the background, or a
        # replacement): out of rotation until it runs.
        self._starting: asyncio.Task[None] | None = None
        # The tasks of the calls in flight, and those ended because the worker was lost.
        self._calls: set[asyncio.Task[Any]] = set()
        self._abandoned: set[asyncio.Task[Any]] = set()
        # Batch bounds set at run time, by method: every worker started in this
        # replica's place gets them before it takes a call.
        self._bounds: dict[str, dict[str, Any]] = {}

    async def start(self) -> None:
        """Raises LaunchError with the worker's log tail."""
        address = await self._launcher.launch_process(self.launch_id, self.spec)
        self.url = address.url
        try:
            for method, bounds in self._bounds.items():
                await self._send_bounds(method, bounds)
        except (aiohttp.ClientError, InvalidRequest) as exc:
            await self._launcher.stop(self.launch_id)
            raise LaunchError(f"tool worker {self.id} did not take its batch bounds: "
                              f"{exc}") from None
        self.healthy = True

    @property
    def starting(self) -> bool:
        return self._starting is not None and not self._starting.done()

    def keep_starting(self, on_running: Callable[[], None]) -> None:
        """Start the worker in the background, again with backoff after each failure,
        until it runs (then ``on_running()``) or the replica stops: on a cluster a worker
        may wait minutes for a node with room. Out of rotation meanwhile."""
        self._starting = asyncio.create_task(self._start_until_running(on_running),
                                             name=f"start-{self.id}")

    def lost(self, on_replaced: Callable[[], None]) -> None:
        """The launcher lost the worker (its process or its Ray actor died) and freed what
        it held. Its calls in flight fail now (a worker on a node that vanished may never
        close their connections), and another worker is started in its place, with
        backoff, until one runs (then ``on_replaced()``) or the replica stops."""
        self.healthy = False
        for task in self._calls:
            self._abandoned.add(task)
            task.cancel()
        if not self.starting:
            self._next_launch_id()
            self.keep_starting(on_replaced)

    def _next_launch_id(self) -> None:
        """A worker after a loss or a failed start is a new process to the launcher:
        ``r-0.1``, ``r-0.2``, ..."""
        self._generation += 1
        self.launch_id = f"{self.id}.{self._generation}"

    async def _start_until_running(self, on_running: Callable[[], None]) -> None:
        backoff = 1.0
        while True:
            try:
                await self.start()
            except LaunchError as exc:
                log.error("tool worker %s did not start (trying again in %.0fs): %s",
                          self.id, backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
                self._next_launch_id()
                continue
            log.info("tool worker %s runs at %s", self.id, self.url)
            on_running()
            return

    async def call(self, spec: ToolSpec, arguments: dict[str, Any],
                   context: CallContext) -> tuple[Any, int | None]:
        headers = {**context.headers(), **self._auth, "content-type": "application/json"}
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            async with self._session.post(f"{self.url}/call/{spec.method}",
                                          data=orjson.dumps(arguments),
                                          headers=headers) as resp:
                body = await resp.read()
        except asyncio.CancelledError:
            # Cancelled by ``lost`` (and by nothing else: then it stays cancelled).
            if task not in self._abandoned or task.uncancel() > 0:
                raise
            raise self._went_away(spec) from None
        except aiohttp.ClientConnectorError:
            self.healthy = False
            raise NotSent(self.id) from None
        except (aiohttp.ClientError, ConnectionError):
            self.healthy = False
            raise self._went_away(spec) from None
        finally:
            self._calls.discard(task)
            self._abandoned.discard(task)
        return self._answer(spec, resp.status, body)

    def _went_away(self, spec: ToolSpec) -> ToolWorkerLost:
        return ToolWorkerLost(f"tool {spec.name!r}: worker {self.id} went away during the "
                              "call (not retried: a tool need not be idempotent)")

    def _answer(self, spec: ToolSpec, status: int, body: bytes) -> tuple[Any, int | None]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = {}
        if status == 200 and isinstance(data, dict) and "output" in data:
            return data["output"], data.get("batch_size")
        error = data.get("error", {}) if isinstance(data, dict) else {}
        message = str(error.get("message") or f"worker answered {status}")
        if status == 400:
            raise InvalidRequest(message, param=error.get("param"))
        raise ToolError(f"tool {spec.name!r} failed: {message}")

    async def check(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        if self.starting:
            return  # a lost worker stays out, even if its address answers, until replaced
        try:
            async with session.get(self.url + "/health",
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                self.healthy = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            self.healthy = False

    async def set_batch_bounds(self, method: str, bounds: dict[str, Any]) -> None:
        """The running worker's, and every later one's; a worker still starting (or
        being replaced) gets them once it runs."""
        if not self.starting:
            await self._send_bounds(method, bounds)  # kept only once a worker took them
        self._bounds[method] = {**self._bounds.get(method, {}), **bounds}

    async def _send_bounds(self, method: str, bounds: dict[str, Any]) -> None:
        async with self._session.post(f"{self.url}/batch/{method}", data=orjson.dumps(bounds),
                                      headers=self._auth) as resp:
            if resp.status != 200:
                raise InvalidRequest(f"worker {self.id}: {(await resp.read()).decode()}")

    async def stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        await self._launcher.stop(self.launch_id)
