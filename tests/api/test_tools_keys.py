"""Tools and API keys, with the app in process (one in-process tool instance): a key whose
``tools:`` lists names sees and calls only those; another name is a 404 as for a tool
that does not exist; without a key, 401."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from llmgw.api.app import create_app
from llmgw.config import ConfigError, GatewayConfig
from llmgw.tenancy.keys import hash_key
from llmgw.tools.registry import check_tools
from llmgw.tools.toolset import ToolSet
from tests.support import in_process_gateway

LIMITED, FULL = "limited-key", "full-key"


def config(tmp: Path, tools: list[str]) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "server": {"state_dir": str(tmp)},
        "models": [{"name": "m", "engine": "openai", "url": "http://127.0.0.1:9"}],
        "tools": [{"name": "t", "import_path": "tests.fakes.tools:Recorder", "replicas": 0}],
        "auth": {"keys": [{"name": "limited", "hash": hash_key(LIMITED), "tools": tools},
                          {"name": "full", "hash": hash_key(FULL)}]},
    })


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    cfg = config(tmp_path, ["t_echo"])
    gateway = in_process_gateway(cfg)
    tools = ToolSet(cfg, check_tools(cfg), gateway.metrics)
    await tools.start()
    transport = httpx.ASGITransport(app=create_app(gateway, tool_set=tools))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        yield client
    await tools.close()
    await gateway.close()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def test_a_key_lists_and_calls_only_its_tools(client: httpx.AsyncClient) -> None:
    limited = (await client.get("/v1/tools", headers=bearer(LIMITED))).json()["data"]
    assert [t["function"]["name"] for t in limited] == ["t_echo"]
    full = (await client.get("/v1/tools", headers=bearer(FULL))).json()["data"]
    assert len(full) == 7
    ok = await client.post("/v1/tools/t_echo", json={"arguments": {"text": "a"}},
                           headers=bearer(LIMITED))
    assert ok.json()["output"]["text"] == "a"
    hidden = await client.post("/v1/tools/t_add", json={"arguments": {}},
                               headers=bearer(LIMITED))
    unknown = await client.post("/v1/tools/t_nope", json={"arguments": {}},
                                headers=bearer(LIMITED))
    assert (hidden.status_code, unknown.status_code) == (404, 404)
    assert hidden.json()["error"] == {"message": "no tool named 't_add'", "param": "name",
                                      "type": "invalid_request_error",
                                      "code": "tool_not_found"}
    allowed = await client.post("/v1/tools/t_add", json={"arguments": {"point": {"x": 1}}},
                                headers=bearer(FULL))
    assert allowed.json()["output"] == 1


async def test_tools_need_a_key_with_auth(client: httpx.AsyncClient) -> None:
    for answer in (await client.get("/v1/tools"),
                   await client.post("/v1/tools/t_echo", json={"arguments": {"text": "a"}})):
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"


def test_a_key_naming_an_unknown_tool_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^auth.keys\[0\].tools: no tool named 'weather'$"):
        check_tools(config(tmp_path, ["weather"]))


async def test_mcp_asks_for_a_key_and_lists_only_its_tools(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["t_echo"])
    gateway = in_process_gateway(cfg)
    tools = ToolSet(cfg, check_tools(cfg), gateway.metrics)
    await tools.start()
    app = create_app(gateway, tool_set=tools)
    headers = {"accept": "application/json, text/event-stream",
               "content-type": "application/json", "mcp-protocol-version": "2025-11-25"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8000") as http:
            refused = await http.post("/mcp", json=init, headers=headers)
            assert (refused.status_code, refused.json()["error"]["code"]) == (
                401, "invalid_api_key")
            keyed = {**headers, **bearer(LIMITED)}
            started = await http.post("/mcp", json=init, headers=keyed)
            assert started.status_code == 200, started.text
            session = {**keyed, "mcp-session-id": started.headers["mcp-session-id"]}
            await http.post("/mcp", headers=session,
                            json={"jsonrpc": "2.0", "method": "notifications/initialized"})
            listed = await http.post("/mcp", headers=session, json={
                "jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert [t["name"] for t in listed.json()["result"]["tools"]] == ["t_echo"]
            hidden = await http.post("/mcp", headers=session, json={
                "jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "t_add", "arguments": {"point": {"x": 1}}}})
            assert hidden.json()["error"]["message"] == "Unknown tool: t_add"
    finally:
        await tools.close()
        await gateway.close()


async def test_a_key_made_at_run_time_may_list_tools(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["t_echo"])
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"admin_key": "adm"})})
    gateway = in_process_gateway(cfg)
    tools = ToolSet(cfg, check_tools(cfg), gateway.metrics)
    await tools.start()
    admin = bearer("adm")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                app=create_app(gateway, tool_set=tools)), base_url="http://gw") as client:
            unknown = await client.post("/admin/keys", headers=admin,
                                        json={"name": "rt", "tools": ["nope"]})
            assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "tools")
            made = (await client.post("/admin/keys", headers=admin,
                                      json={"name": "rt", "tools": ["t_add"]})).json()
            assert made["tools"] == ["t_add"]
            listed = await client.get("/v1/tools", headers=bearer(made["key"]))
            assert [t["function"]["name"] for t in listed.json()["data"]] == ["t_add"]
    finally:
        await tools.close()
        await gateway.close()
    # Kept in the state file: a restart still limits the key to its tools.
    restarted = in_process_gateway(cfg)
    assert restarted.tenancy.ring.get("rt").tools == frozenset({"t_add"})  # type: ignore[union-attr]
    await restarted.close()
