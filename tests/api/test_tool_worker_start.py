"""A tool worker that starts in the background (as on a Ray cluster, where it may wait
for a node with room): calls get 503 tool_unavailable until it runs, and batch bounds
set meanwhile reach it before its first call. A real worker process, started by the
local launcher; the test decides when the launch may begin (tests/ray/ has a real wait
for room)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from llmgw.api.app import create_app
from llmgw.config import GatewayConfig
from llmgw.placement.base import ReplicaAddress
from llmgw.placement.local import LocalLauncher
from llmgw.placement.spec import ProcessSpec
from llmgw.tools.registry import check_tools
from llmgw.tools.toolset import ToolSet
from tests.support import in_process_gateway, wait_until

ADMIN = {"authorization": "Bearer start-test-admin"}


class HeldLauncher(LocalLauncher):
    """The local launcher, whose launches wait until ``room`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.room = asyncio.Event()

    async def launch_process(self, replica_id: str, spec: ProcessSpec,
                             **kwargs: Any) -> ReplicaAddress:
        await self.room.wait()
        return await super().launch_process(replica_id, spec, **kwargs)


async def test_bounds_set_while_a_worker_starts_reach_it_before_its_first_call() -> None:
    cfg = GatewayConfig.model_validate({
        "server": {"admin_key": ADMIN["authorization"].split()[1]},
        "models": [{"name": "m", "engine": "openai", "url": "http://127.0.0.1:9"}],
        "tools": [{"name": "r", "import_path": "tests.fakes.tools:Recorder", "replicas": 1}],
    })
    gateway = in_process_gateway(cfg)
    launcher = HeldLauncher()
    tools = ToolSet(cfg, check_tools(cfg), gateway.metrics, launcher)
    await tools.start(wait=False)  # returns at once: the worker starts in the background
    try:
        transport = httpx.ASGITransport(app=create_app(gateway, tool_set=tools))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=60) as client:
            waiting = await client.post("/v1/tools/r_echo", json={"arguments": {"text": "x"}})
            assert waiting.status_code == 503, waiting.text
            assert waiting.json()["error"]["code"] == "tool_unavailable"
            # The config batches up to 4 squares for 30 s; one at a time from now on.
            bounds = await client.post("/admin/tools/r_square/batch", headers=ADMIN,
                                       json={"max_batch_size": 1})
            assert bounds.status_code == 200, bounds.text
            bounds = await client.post("/admin/tools/r_square/batch", headers=ADMIN,
                                       json={"batch_wait_timeout_s": 0})
            assert bounds.status_code == 200, bounds.text
            launcher.room.set()
            worker = tools.deployments["r"].replicas[0]
            await asyncio.to_thread(wait_until, lambda: worker.healthy, 60, "the worker")
            squares = await asyncio.gather(*(client.post(
                "/v1/tools/r_square", json={"arguments": {"n": i}}) for i in range(3)))
            assert [s.json()["output"] for s in squares] == [0, 1, 4]
            sizes = await client.post("/v1/tools/r_batch_sizes", json={"arguments": {}})
            assert sizes.json()["output"] == [1, 1, 1]
            assert sorted(launcher.processes) == ["r-0"]  # started once, under its own id
    finally:
        launcher.room.set()
        await tools.close()
        await gateway.close()
    assert launcher.processes == {}
