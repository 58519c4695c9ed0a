"""The placement seam as a Ray backend will use it, with a launcher whose replicas are
real fake-engine processes: the fleet launches through it, and a replica the backend
brings back on another address (a Ray actor placed again) is replaced in the pool and
served there."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from llmgw.api.app import create_app
from llmgw.build import Gateway
from llmgw.config import GatewayConfig, ModelConfig
from llmgw.fleet.controller import Fleet
from llmgw.types import ReplicaAddress
from tests.support import Server, start_fake_engine


class ProcessLauncher:
    """Each replica a fake-engine process of its own (what a Ray actor would start)."""

    def __init__(self) -> None:
        self.servers: dict[str, Server] = {}
        self.on_restart: Callable[[str, str], None] = lambda m, r: None
        self.on_moved: Callable[[str, str, ReplicaAddress], None] = lambda m, r, a: None

    async def launch(self, replica_id: str, unit: ModelConfig) -> ReplicaAddress:
        server = await asyncio.to_thread(start_fake_engine, name=unit.upstream_model)
        self.servers[replica_id] = server
        return ReplicaAddress(replica_id, server.url)

    async def stop(self, replica_id: str) -> None:
        server = self.servers.pop(replica_id, None)
        if server is not None:
            await asyncio.to_thread(server.stop)

    async def stop_all(self) -> None:
        for replica_id in list(self.servers):
            await self.stop(replica_id)


def test_a_replica_that_moved_is_served_at_its_new_address() -> None:
    async def run() -> None:
        config = GatewayConfig.model_validate({"models": [
            {"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]})
        launcher = ProcessLauncher()
        gateway = Gateway(config)
        fleet = Fleet(gateway, launcher)
        elsewhere = await asyncio.to_thread(start_fake_engine, name="m")
        try:
            await fleet.start()
            assert [r.id for r in gateway.pool.replicas("m")] == ["m-0"]
            launcher.on_moved("m", "m-0", ReplicaAddress("m-0", elsewhere.url))
            (moved,) = gateway.pool.replicas("m")
            assert (moved.id, moved.engine.url, moved.healthy) == ("m-0", elsewhere.url, True)
            transport = httpx.ASGITransport(app=create_app(gateway, fleet))
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                answer = await client.post("/v1/chat/completions", json={
                    "model": "m", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "where are you"}]})
            assert answer.status_code == 200 and answer.headers["x-llmgw-replica"] == "m-0"
            served = httpx.get(elsewhere.url + "/fake/last_request").json()
            assert served["messages"][0]["content"] == "where are you"
        finally:
            await fleet.close()
            await gateway.close()
            elsewhere.stop()

    asyncio.run(run())
