"""A worker its launcher reports lost (as the Ray launcher does when the worker's actor
or node dies) fails its calls in flight with 502 tool_worker_lost at once, even when its
connections stay open (a node that vanished sends nothing), and a new worker takes its
place. Real worker processes, started by the local launcher; the loss is reported
through the launcher's callback as the Ray launcher would (tests/ray/ has the real one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psutil

from llmgw.api.app import create_app
from llmgw.config import GatewayConfig
from llmgw.placement.local import LocalLauncher
from llmgw.tools.registry import check_tools
from llmgw.tools.toolset import ToolSet
from tests.support import in_process_gateway, wait_until


async def test_a_lost_worker_fails_its_calls_at_once_and_is_replaced(tmp_path: Path) -> None:
    gate = tmp_path / "gate"  # never created: the `slow` call stays in flight
    cfg = GatewayConfig.model_validate(
        {
            "models": [{"name": "m", "engine": "openai", "url": "http://127.0.0.1:9"}],
            "tools": [
                {
                    "name": "r",
                    "import_path": "tests.fakes.tools:Recorder",
                    "replicas": 1,
                    "init_args": {"gate": str(gate)},
                }
            ],
        }
    )
    gateway = in_process_gateway(cfg)
    launcher = LocalLauncher()
    tools = ToolSet(cfg, check_tools(cfg), gateway.metrics, launcher)
    await tools.start()
    try:
        transport = httpx.ASGITransport(app=create_app(gateway, tool_set=tools))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw", timeout=60
        ) as client:
            first = (
                await client.post("/v1/tools/r_echo", json={"arguments": {"text": "x"}})
            ).json()["output"]
            held = asyncio.create_task(
                client.post("/v1/tools/r_slow", json={"arguments": {"marker": "m"}})
            )
            await asyncio.to_thread(
                wait_until, lambda: Path(f"{gate}.m").exists(), 30, "the call to reach the worker"
            )
            launcher.on_lost("r", "r-0", "its node died")
            lost = await held
            assert lost.status_code == 502, lost.text
            assert lost.json()["error"]["code"] == "tool_worker_lost"
            # The old worker still holds the connection: only the report ended the call.
            assert psutil.Process(first["pid"]).is_running()
            # Its replacement serves (a new process, launched as r-0.1).
            worker = tools.deployments["r"].replicas[0]
            await asyncio.to_thread(wait_until, lambda: worker.healthy, 60, "a new worker")
            assert worker.launch_id == "r-0.1"
            again = await client.post("/v1/tools/r_echo", json={"arguments": {"text": "x"}})
            assert again.status_code == 200 and again.json()["output"]["pid"] != first["pid"]
            assert sorted(launcher.processes) == ["r-0", "r-0.1"]
    finally:
        gate.touch()  # the old worker's call ends: it stops at once
        await tools.close()
        await gateway.close()
    assert launcher.processes == {}
