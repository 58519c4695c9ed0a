"""The oracle router: an in-process aiohttp proxy that sends each request to the replica
with the longest true cached prefix of its prompt (ties: fewest requests in flight from
this proxy, then a seeded coin), asking the simulator's ``/sim/match`` before each one.

"True" also counts the prompts this proxy has sent to a replica and not yet seen
answered: their blocks are cached before a request sent now would prefill (slots and the
prefill lane are FIFO). Without them, concurrent requests that share a new prefix would
scatter while the first one computes it.

With ``load_factor`` (the harness's headline ``oracle``) only replicas with fewer
requests in flight than ``load_factor`` x the mean + 1 compete on prefix. Without it
(``oracle-unbounded``, a reference row) load is ignored whenever one replica has more
cached, so a prefix every request shares sends them all to one replica. Either is greedy:
it knows the caches, not the future, so it is a reference point, not an upper bound on
what a router can hit.
"""

from __future__ import annotations

import itertools
import random
from os.path import commonprefix  # any sequences, not only paths

import aiohttp
import orjson
from aiohttp import web

from bench.fleet_sim.generation import adapter_of
from bench.fleet_sim.targets import MODEL
from bench.fleet_sim.tokens import block_hashes, render_body, token_count


class OracleProxy:
    """Owns its server and its client session; start with :meth:`start`, stop with
    :meth:`stop`. Runs on the harness's event loop; ``block_tokens`` must be the sims'."""

    def __init__(self, urls: dict[str, str], seed: int, block_tokens: int,
                 load_factor: float | None = None) -> None:
        self.urls = urls  # replica name (sim-<port>) -> base URL
        self.load_factor = load_factor
        self.rng = random.Random(seed)
        self.block_tokens = block_tokens
        self.url = ""
        # replica -> request number -> the block hashes of its prompt, while in flight
        self.in_flight: dict[str, dict[int, list[bytes]]] = {name: {} for name in urls}
        self._ids = itertools.count()
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

    async def pick(self, body: bytes, hashes: list[bytes]) -> str:
        assert self._http is not None
        any_url = next(iter(self.urls.values()))  # one process answers for all replicas
        async with self._http.post(any_url + "/sim/match", data=body) as response:
            cached: dict[str, int] = (await response.json())["cached"]

        def blocks(name: str) -> int:
            coming = (len(commonprefix([hashes, h])) for h in self.in_flight[name].values())
            return max([cached[name] // self.block_tokens, *coming])

        def load(name: str) -> int:
            return len(self.in_flight[name])

        names = list(self.urls)
        if self.load_factor is not None:
            mean = sum(map(load, names)) / len(names)
            names = [n for n in names if load(n) < self.load_factor * mean + 1]
        return min(names, key=lambda name: (-blocks(name), load(name), self.rng.random()))

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        data = orjson.loads(body)
        prompt = render_body(data)
        limit = max(0, token_count(prompt) - 1) // self.block_tokens  # as the sims count
        # Salted by the LoRA adapter the request names, as the sims' blocks are.
        adapter = adapter_of(str(data.get("model") or MODEL), MODEL)
        hashes = block_hashes(prompt, self.block_tokens, adapter=adapter)[:limit]
        name = await self.pick(body, hashes)
        key = next(self._ids)
        self.in_flight[name][key] = hashes
        try:
            return await self._relay(request, name, body)
        finally:
            del self.in_flight[name][key]

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
