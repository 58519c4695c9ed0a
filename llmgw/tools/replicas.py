"""Where a tool call runs: a worker process (``WorkerReplica``) or the gateway itself
(``LocalReplica``, ``replicas: 0``). Both count their calls in flight (least-load routing
reads it) and say whether they are healthy.

Worker processes are started and supervised like engines: ``EngineProcess`` of the local
launcher (its own process group, killed with the gateway, restarted in place with backoff
when it exits, ready once ``/health`` answers). A call whose worker goes away fails with
``ToolWorkerLost`` and is never resent: a tool need not be idempotent. Only a call that
never reached a worker (connection refused) may go to another.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from llmgw.config import ToolConfig
from llmgw.context import CallContext, enter, leave
from llmgw.errors import InvalidRequest, ToolError, ToolWorkerLost
from llmgw.placement.local import EngineProcess, free_port
from llmgw.tools.host import ToolHost, ToolRaised
from llmgw.tools.schema import ArgumentsInvalid, ToolSpec


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
    """One worker process of a deployment, reached over loopback HTTP."""

    def __init__(self, replica_id: str, cfg: ToolConfig, session: aiohttp.ClientSession,
                 log_path: Path, on_restart: Callable[[str, str], None],
                 gateway_url: str) -> None:
        self.id, self._session = replica_id, session
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # The worker imports what the gateway imported: the same module search path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        argv = [sys.executable, "-m", "llmgw.tools.worker", "--port", str(port),
                "--gateway-url", gateway_url, "--config", json.dumps(cfg.model_dump(mode="json"))]
        self.process = EngineProcess(cfg.name, replica_id, argv, env, self.url, log_path,
                                     cfg.startup_timeout_s, on_restart)
        self.in_flight, self.healthy = 0, False

    async def start(self) -> None:
        """Raises LaunchError with the worker's log tail."""
        await self.process.start()
        self.healthy = True

    async def call(self, spec: ToolSpec, arguments: dict[str, Any],
                   context: CallContext) -> tuple[Any, int | None]:
        headers = {**context.headers(), "content-type": "application/json"}
        try:
            async with self._session.post(f"{self.url}/call/{spec.method}",
                                          data=orjson.dumps(arguments),
                                          headers=headers) as resp:
                body = await resp.read()
        except aiohttp.ClientConnectorError:
            self.healthy = False
            raise NotSent(self.id) from None
        except (aiohttp.ClientError, ConnectionError):
            self.healthy = False
            raise ToolWorkerLost(f"tool {spec.name!r}: worker {self.id} went away during the "
                                 "call (not retried: a tool need not be idempotent)") from None
        return self._answer(spec, resp.status, body)

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
        try:
            async with session.get(self.url + "/health",
                                   timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                self.healthy = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            self.healthy = False

    async def set_batch_bounds(self, method: str, bounds: dict[str, Any]) -> None:
        async with self._session.post(f"{self.url}/batch/{method}",
                                      data=orjson.dumps(bounds)) as resp:
            if resp.status != 200:
                raise InvalidRequest(f"worker {self.id}: {(await resp.read()).decode()}")

    async def stop(self) -> None:
        await self.process.stop()
