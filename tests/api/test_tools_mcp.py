"""configs/tools.yaml as an operator runs it (`llmgw up`), its tools over /v1/tools and
over /mcp, driven by the official ``mcp`` client in both protocol eras (the 2026-07-28
revision and the initialize handshake), plus the older handshake versions on the wire."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.support import Server, llmgw_up

EXAMPLES = ["weather", "weather_forecast", "embed"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Server]:
    server = llmgw_up("configs/tools.yaml", timeout_s=120)
    yield server
    server.stop()


def test_tools_yaml_serves_its_examples(gateway: Server) -> None:
    names = [t["function"]["name"] for t in httpx.get(gateway.url + "/v1/tools").json()["data"]]
    assert names == EXAMPLES
    forecast = httpx.post(gateway.url + "/v1/tools/weather_forecast",
                          json={"arguments": {"city": "Oslo", "days": 2}}).json()
    assert (forecast["output"]["city"], len(forecast["output"]["temperatures"])) == ("Oslo", 2)
    embed = httpx.post(gateway.url + "/v1/tools/embed", json={"arguments": {"text": "hi"}})
    assert len(embed.json()["output"]) == 8


@pytest.mark.parametrize("mode", ["auto", "legacy", "2026-07-28"])
async def test_mcp_client_lists_and_calls_tools(gateway: Server, mode: str) -> None:
    async with Client(gateway.url + "/mcp", mode=mode) as client:  # type: ignore[arg-type]
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == EXAMPLES
        weather = listed.tools[0]
        assert weather.description == "The weather today in a city, in one sentence."
        assert weather.input_schema["required"] == ["city"]
        assert weather.output_schema == {"type": "object", "required": ["result"],
                                         "properties": {"result": {"type": "string"}}}
        assert listed.tools[1].output_schema is not None
        assert listed.tools[1].output_schema["title"] == "Forecast"
        result = await client.call_tool("weather", {"city": "Oslo"})
        expected = httpx.post(gateway.url + "/v1/tools/weather",
                              json={"arguments": {"city": "Oslo"}}).json()["output"]
        assert (result.is_error, result.content[0].text) == (False, expected)  # type: ignore[union-attr]
        assert result.structured_content == {"result": expected}
        forecast = await client.call_tool("weather_forecast", {"city": "Oslo", "days": 1})
        assert forecast.structured_content is not None
        assert forecast.structured_content["days"] == 1
        # Arguments the schema refuses: a result the model can read, not a protocol error.
        bad = await client.call_tool("weather_forecast", {"city": "Oslo", "days": 99})
        assert bad.is_error
        assert bad.content[0].text == (  # type: ignore[union-attr]
            "tool 'weather_forecast': days: Input should be less than or equal to 14")
        with pytest.raises(MCPError, match="Unknown tool: nope"):
            await client.call_tool("nope", {})


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", "2025-11-25"])
def test_handshake_versions_on_the_wire(gateway: Server, version: str) -> None:
    """The 2025 handshake as clients of each version send it: initialize, the session id
    echoed, notifications/initialized, then tools/list on the session."""
    headers = {"accept": "application/json, text/event-stream",
               "content-type": "application/json"}
    with httpx.Client(base_url=gateway.url, headers=headers) as http:
        init = http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                       "params": {"protocolVersion": version,
                                                  "capabilities": {},
                                                  "clientInfo": {"name": "t", "version": "1"}}})
        assert init.status_code == 200, init.text
        assert init.json()["result"]["protocolVersion"] == version
        assert "tools" in init.json()["result"]["capabilities"]
        session = {"mcp-session-id": init.headers["mcp-session-id"],
                   "mcp-protocol-version": version}
        note = http.post("/mcp", headers=session,
                         json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert note.status_code == 202
        listed = http.post("/mcp", headers=session,
                           json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        assert [t["name"] for t in listed.json()["result"]["tools"]] == EXAMPLES
        # Without the session id, a handshake-era request is refused.
        alone = http.post("/mcp", headers={"mcp-protocol-version": version},
                          json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"})
        assert alone.status_code == 400


def test_a_foreign_origin_is_refused(gateway: Server) -> None:
    """DNS-rebinding protection: a browser page of another origin cannot use a loopback
    gateway's tools."""
    answer = httpx.post(gateway.url + "/mcp", headers={
        "origin": "http://evil.example", "accept": "application/json, text/event-stream",
        "content-type": "application/json"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert answer.status_code == 403
