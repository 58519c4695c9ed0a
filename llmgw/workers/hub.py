"""The workers' control plane: small HTTP APIs on Unix sockets in the supervisor's run
directory (never on the served port, never reachable from another machine).

``supervisor.sock`` (the supervisor):

    GET  /members?since=G&wait=S   the fleet's launched replicas (``fleet.sharing.members``)
                                   once their generation is past G, or after S seconds
    POST /changed {"what", "origin"}
                                   worker ``origin`` made an admin change (``what``: keys,
                                   adapters, reload); the supervisor applies it too (reload)
                                   and tells every other worker, answering once all have

``worker-K.sock`` (worker K):

    POST /apply {"what"}           re-read the key or adapter state file, or reload the
                                   config files; 200, or 400 with the reason

A change is therefore visible in every worker when the admin call that made it returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from aiohttp import web

from llmgw.placement.ray_directory import FleetDirectory

log = logging.getLogger("llmgw.workers")
Change = Literal["keys", "adapters", "reload"]
CHANGES: frozenset[str] = frozenset({"keys", "adapters", "reload"})
SUPERVISOR_SOCKET = "supervisor.sock"
# An admin call waits this long for each other worker to apply its change.
APPLY_TIMEOUT_S = 60.0
_OWNER = "supervisor"


def worker_socket(run_dir: Path, index: int) -> Path:
    return run_dir / f"worker-{index}.sock"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def serve_unix(app: web.Application, path: Path) -> web.AppRunner:
    """``app`` on the Unix socket ``path`` (only this user may connect)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    path.chmod(0o600)
    return runner


async def post(
    path: Path, route: str, body: dict[str, Any], timeout_s: float = APPLY_TIMEOUT_S
) -> tuple[int, dict[str, Any]]:
    """POST JSON to a control socket: (status, JSON answer). Raises OSError or
    aiohttp.ClientError when nothing answers there."""
    connector = aiohttp.UnixConnector(path=str(path))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        session.post(f"http://llmgw{route}", data=orjson.dumps(body)) as answer,
    ):
        return answer.status, orjson.loads(await answer.read())


class SupervisorDirectory:
    """The supervisor's side of the ``Directory`` seam: its fleet publishes its members
    here (``fleet.sharing.lead``) and the workers read them over ``GET /members``. The
    supervisor owns the fleet for its whole life, so there is no lease to hand over."""

    def __init__(self) -> None:
        self.store = FleetDirectory()

    async def claim(self, members: list[dict[str, object]] | None) -> bool:
        return await self.store.claim(_OWNER, members)

    async def release(self) -> None:
        return None

    async def watch(self, since: int, wait_s: float) -> tuple[int, list[dict[str, object]]]:
        generation, members, _ = await self.store.watch(since, wait_s)
        return generation, members


class WorkerDirectory:
    """A worker's side: it follows the supervisor for life (``claim`` is always False:
    a worker never launches), reading the members over the supervisor's socket."""

    def __init__(self, run_dir: Path) -> None:
        self._path = run_dir / SUPERVISOR_SOCKET
        self._session: aiohttp.ClientSession | None = None

    async def claim(self, members: list[dict[str, object]] | None) -> bool:
        return False

    async def release(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def watch(self, since: int, wait_s: float) -> tuple[int, list[dict[str, object]]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self._path))
            )
        url = f"http://llmgw/members?since={since}&wait={wait_s}"
        async with self._session.get(
            url, timeout=aiohttp.ClientTimeout(total=wait_s + 10)
        ) as answer:
            answer.raise_for_status()
            data = orjson.loads(await answer.read())
        return int(data["generation"]), list(data["members"])


def supervisor_app(
    directory: SupervisorDirectory, changed: Callable[[Change, int | None], Awaitable[list[str]]]
) -> web.Application:
    """``changed(what, origin)`` applies a change here and in the other workers; it
    returns what failed (empty: all applied)."""

    async def members(request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "-1"))
            wait_s = min(float(request.query.get("wait", "0")), 30.0)
        except ValueError:
            return _json({"error": "since and wait are numbers"}, 400)
        generation, found = await directory.watch(since, wait_s)
        return _json({"generation": generation, "members": found})

    async def on_changed(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        what, origin = body.get("what"), body.get("origin")
        if what not in CHANGES or not isinstance(origin, int):
            return _json({"error": "what: keys, adapters or reload; origin: a worker"}, 400)
        failed = await changed(what, origin)
        return _json({"failed": failed})

    app = web.Application()
    app.router.add_get("/members", members)
    app.router.add_post("/changed", on_changed)
    return app


def worker_app(apply: Callable[[Change], Awaitable[str | None]]) -> web.Application:
    """``apply(what)`` makes one change here; it returns why it could not (None: done)."""

    async def on_apply(request: web.Request) -> web.Response:
        what = orjson.loads(await request.read()).get("what")
        if what not in CHANGES:
            return _json({"error": "what: keys, adapters or reload"}, 400)
        problem = await apply(what)
        return _json({"error": problem}, 400) if problem else _json({"applied": what})

    app = web.Application()
    app.router.add_post("/apply", on_apply)
    return app


async def tell_workers(run_dir: Path, indexes: list[int], what: Change) -> list[str]:
    """POST /apply to each worker at once; what failed, as lines for the log and the
    admin call's caller. A worker that is not listening yet is skipped: it reads the
    state files and the config as it starts, after the change was written."""

    async def one(index: int) -> str | None:
        try:
            status, answer = await post(worker_socket(run_dir, index), "/apply", {"what": what})
        except aiohttp.ClientConnectorError:  # no socket yet, or nobody listening on it
            return None
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            return f"worker {index}: {type(exc).__name__}: {exc}"
        return None if status == 200 else f"worker {index}: {answer.get('error')}"

    results = await asyncio.gather(*(one(index) for index in indexes))
    return [r for r in results if r is not None]
