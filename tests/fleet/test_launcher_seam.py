"""The placement seam as the Ray backend uses it, with a launcher whose replicas are
real fake-engine processes: the fleet launches through it, a replica the backend loses
(its Ray node died) leaves the pool and a replacement is launched and served, and
replicas the backend finds running at start are adopted or stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from llmgw.api.app import create_app
from llmgw.build import Gateway
from llmgw.config import GatewayConfig, ModelConfig
from llmgw.fleet.controller import Fleet
from llmgw.fleet.version import replica_version
from llmgw.placement.base import RunningReplica
from llmgw.pool import Replica
from llmgw.types import ReplicaAddress, Role
from tests.support import Server, start_fake_engine


class ProcessLauncher:
    """Each replica a fake-engine process of its own (what a Ray actor would start)."""

    def __init__(self) -> None:
        self.servers: dict[str, Server] = {}
        self.on_restart: Callable[[str, str], None] = lambda m, r: None
        self.on_lost: Callable[[str, str, str], None] = lambda m, r, why: None
        self.on_phase: Callable[[str, str], None] = lambda r, phase: None
        self.running: list[RunningReplica] = []
        self.launched: list[str] = []

    async def launch(self, replica_id: str, unit: ModelConfig, *, role: Role,
                     version: str) -> ReplicaAddress:
        server = await asyncio.to_thread(start_fake_engine, name=unit.upstream_model)
        self.servers[replica_id] = server
        self.launched.append(replica_id)
        return ReplicaAddress(replica_id, server.url)

    async def adoptable(self) -> list[RunningReplica]:
        return self.running

    def phase(self, replica_id: str) -> str | None:
        return None

    async def stop(self, replica_id: str) -> None:
        server = self.servers.pop(replica_id, None)
        if server is not None:
            await asyncio.to_thread(server.stop)

    async def close(self) -> None:
        for replica_id in list(self.servers):
            await self.stop(replica_id)


def test_a_lost_replica_is_replaced_and_the_replacement_serves() -> None:
    async def run() -> None:
        config = GatewayConfig.model_validate({"models": [
            {"name": "m", "engine": "fake", "model": "fake", "replicas": 1}]})
        launcher = ProcessLauncher()
        gateway = Gateway(config)
        fleet = Fleet(gateway, launcher)
        try:
            await fleet.start()
            assert [r.id for r in gateway.pool.replicas("m")] == ["m-0"]
            # The backend frees what it lost itself; the fleet only hears of it.
            await launcher.stop("m-0")
            launcher.on_lost("m", "m-0", "its node died")
            assert gateway.pool.get("m-0") is None
            replacement = await _ready_replica(gateway, "m-1")
            assert replacement.healthy and launcher.launched == ["m-0", "m-1"]
            answer = await _chat(gateway, fleet, "where are you")
            assert answer.status_code == 200 and answer.headers["x-llmgw-replica"] == "m-1"
            served = httpx.get(launcher.servers["m-1"].url + "/fake/last_request").json()
            assert served["messages"][0]["content"] == "where are you"
        finally:
            await fleet.close()
            await gateway.close()

    asyncio.run(run())


def test_running_replicas_are_adopted_by_version_and_strangers_stopped() -> None:
    """What a gateway restart on a Ray cluster does: a replica of the config's version
    serves at once and is not launched again; one of an older version serves until its
    replacement is ready, then is drained and stopped; one no pool wants is stopped."""
    async def run() -> None:
        config = GatewayConfig.model_validate({"models": [
            {"name": "m", "engine": "fake", "model": "fake", "replicas": 2}]})
        model = config.models[0]
        launcher = ProcessLauncher()
        current, old, stranger = [await asyncio.to_thread(start_fake_engine, name="m")
                                  for _ in range(3)]
        launcher.servers.update({"m-0": current, "m-3": old, "gone-0": stranger})
        launcher.running = [
            RunningReplica("m", "mixed", replica_version(model),
                           ReplicaAddress("m-0", current.url)),
            RunningReplica("m", "mixed", "older", ReplicaAddress("m-3", old.url)),
            RunningReplica("gone", "mixed", "x", ReplicaAddress("gone-0", stranger.url))]
        gateway = Gateway(config)
        fleet = Fleet(gateway, launcher)
        try:
            await fleet.start()
            # One launched to reach 2 of the current version, numbered after the adopted.
            assert launcher.launched == ["m-4"]
            assert "gone-0" not in launcher.servers
            assert {r.id for r in gateway.pool.replicas("m")} >= {"m-0", "m-4"}
            deployment = fleet.pools[("m", "mixed")].deployment
            for _ in range(500):  # the old version drains (it holds nothing): bounded
                if deployment.settled():
                    break
                fleet.tick()
                await asyncio.sleep(0.01)
            assert sorted(r.id for r in gateway.pool.replicas("m")) == ["m-0", "m-4"]
            assert "m-3" not in launcher.servers
        finally:
            await fleet.close()
            await gateway.close()

    asyncio.run(run())


async def _ready_replica(gateway: Gateway, replica_id: str) -> Replica:
    for _ in range(500):
        replica = gateway.pool.get(replica_id)
        if replica is not None and replica.state == "ready":
            return replica
        await asyncio.sleep(0.01)  # the fleet's background launch; bounded wait
    raise AssertionError(f"{replica_id} never became ready")


async def _chat(gateway: Gateway, fleet: Fleet, content: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(gateway, fleet))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.post("/v1/chat/completions", json={
            "model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": content}]})
