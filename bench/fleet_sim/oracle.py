"""The oracle router: an in-process aiohttp proxy that sends each request to the replica
with the longest true cached prefix of its prompt (ties: fewest requests in flight from
this proxy, then a seeded coin), asking the simulator's ``/sim/match`` before each one.

"True" counts the blocks of requests already queued or prefilling on a replica
(``expected``): they are cached before a request sent now would prefill, and without
them concurrent requests sharing a new prefix would scatter while it is being computed.
It bounds the hit rate a router without the engines' state can reach; it is not a good
router, since it ignores load whenever one replica has more cached.
"""

from __future__ import annotations

import random

import aiohttp
from aiohttp import web


class OracleProxy:
    """Owns its server and its client session; start with :meth:`start`, stop with
    :meth:`stop`. Runs on the harness's event loop."""

    def __init__(self, urls: dict[str, str], seed: int) -> None:
        self.urls = urls  # replica name (sim-<port>) -> base URL
        self.rng = random.Random(seed)
        self.url = ""
        self.in_flight = dict.fromkeys(urls, 0)  # exact: this proxy is the only router
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self, port: int) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            connector=aiohttp.TCPConnector(limit=0))
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.proxy)
        app.router.add_post("/v1/completions", self.proxy)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    async def pick(self, body: bytes) -> str:
        assert self._http is not None
        any_url = next(iter(self.urls.values()))  # one process answers for all replicas
        async with self._http.post(any_url + "/sim/match", data=body) as response:
            truth = await response.json()
        cached: dict[str, int] = truth["expected"]
        return min(self.urls, key=lambda name: (-cached[name], self.in_flight[name],
                                                self.rng.random()))

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        assert self._http is not None
        body = await request.read()
        name = await self.pick(body)
        self.in_flight[name] += 1
        try:
            return await self._relay(request, name, body)
        finally:
            self.in_flight[name] -= 1

    async def _relay(self, request: web.Request, name: str, body: bytes) -> web.StreamResponse:
        assert self._http is not None
        upstream = await self._http.post(self.urls[name] + request.path, data=body,
                                         headers={"content-type": "application/json"})
        try:
            response = web.StreamResponse(status=upstream.status, headers={
                "content-type": upstream.headers.get("content-type", "application/json"),
                "x-oracle-replica": name})
            await response.prepare(request)
            async for data in upstream.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response
        finally:
            upstream.release()
