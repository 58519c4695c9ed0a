"""A tool worker as a process spec (what the Ray launcher asks the cluster for, the
command it runs on the node) and the token its server requires on every call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmgw.config import ToolConfig
from llmgw.placement.spec import Endpoint
from llmgw.tools.host import ToolHost
from llmgw.tools.registry import deployment_specs
from llmgw.tools.worker import create_worker_app
from llmgw.tools.worker_spec import TOKEN_ENV, TOKEN_HEADER, tool_worker_spec

TOKEN = "s3cret-token"


def tool(**fields: Any) -> ToolConfig:
    return ToolConfig.model_validate(
        {"name": "r", "import_path": "tests.fakes.tools:Recorder", **fields}
    )


@pytest.mark.parametrize(
    ("placement", "bundle"),
    [
        ({}, {"CPU": 1.0}),
        ({"cpus": 0.5}, {"CPU": 0.5}),
        (
            {"cpus": 2, "gpus": 0.5, "accelerator_type": "L4", "resources": {"fast_disk": 1}},
            {"CPU": 2.0, "GPU": 0.5, "accelerator_type:L4": 0.001, "fast_disk": 1.0},
        ),
    ],
    ids=["default-one-cpu", "a-share-of-a-cpu", "gpu-accelerator-custom"],
)
def test_a_worker_asks_for_one_bundle_of_its_resources(
    placement: dict[str, Any], bundle: dict[str, float]
) -> None:
    spec = tool_worker_spec(tool(placement=placement), "http://10.0.0.1:8000", TOKEN)
    assert (spec.bundles, spec.strategy, spec.name) == ([bundle], "STRICT_PACK", "r")


@pytest.mark.parametrize(
    "placement",
    [{"nodes": 2}, {"resources": {"CPU": 1}}, {"cpus": 0}],
    ids=["nodes", "cpu-as-custom", "no-cpu"],
)
def test_a_tool_placement_a_worker_cannot_take_is_refused(placement: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        tool(placement=placement)


def test_the_command_binds_the_given_address_and_the_token_stays_out_of_argv() -> None:
    spec = tool_worker_spec(tool(), "http://10.0.0.1:8000", TOKEN)
    argv = spec.command.argv(Endpoint("10.0.0.7", 4321))
    assert argv[1:9] == [
        "-m",
        "llmgw.tools.worker",
        "--host",
        "10.0.0.7",
        "--port",
        "4321",
        "--gateway-url",
        "http://10.0.0.1:8000",
    ]
    # Ray logs the argv of what an actor starts; the environment is not logged.
    assert TOKEN not in " ".join(argv) and TOKEN not in repr(spec)
    assert spec.command.env()[TOKEN_ENV] == TOKEN


@pytest.fixture
async def worker() -> AsyncIterator[TestClient[Any, Any]]:
    cfg = tool()
    host = await ToolHost.create(cfg, deployment_specs(cfg, "tools[0]"))
    async with TestClient(TestServer(create_worker_app(host, "http://gw", TOKEN))) as client:
        yield client
    await host.close()


@pytest.mark.parametrize(
    "headers",
    [{}, {TOKEN_HEADER: "guess"}, {TOKEN_HEADER: ""}, {"authorization": f"Bearer {TOKEN}"}],
    ids=["none", "wrong", "empty", "as-a-bearer-key"],
)
async def test_a_call_without_the_token_is_refused_and_never_runs(
    worker: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    for path, body in (("/call/square", {"n": 3}), ("/batch/square", {"max_batch_size": 1})):
        refused = await worker.post(path, json=body, headers=headers)
        assert refused.status == 401
        assert TOKEN_HEADER in (await refused.json())["error"]["message"]
    ran = await worker.post("/call/batch_sizes", json={}, headers={TOKEN_HEADER: TOKEN})
    assert (ran.status, await ran.json()) == (200, {"output": [], "batch_size": None})
    assert (await worker.get("/health")).status == 200  # the launcher's check needs none
