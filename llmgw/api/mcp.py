"""The tools as an MCP server at ``/mcp`` (Streamable HTTP), built on the official ``mcp``
package (the ``llmgw[mcp]`` extra): its low-level ``Server`` with two handlers and its
session manager, which serves both protocol eras on one endpoint:

- the handshake era (2025-03-26 .. 2025-11-25): ``initialize``, an ``Mcp-Session-Id``
  the client echoes, ``notifications/initialized``, then requests on that session. Sessions
  live in this gateway process (bounded in number and idle time): after a restart a
  client gets 404 and initializes again, as the protocol says;
- the 2026-07-28 revision: no handshake, ``server/discover``, every request stands alone.

``tools/list`` gives every tool the caller may use (``auth:`` keys with ``tools:``);
``tools/call`` runs one through the same ``ToolSet.call`` as ``POST /v1/tools/{name}``. A
tool that raises, or arguments its schema refuses, come back as a result with ``isError``
and the message as text (the model reads it); an unknown tool is a JSON-RPC error. With
``auth:``, every request needs an API key (``Authorization: Bearer``), as /v1 does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from llmgw.api.errors import error_response
from llmgw.context import depth_of
from llmgw.errors import GatewayError
from llmgw.tenancy.gate import Tenancy
from llmgw.tenancy.keys import ApiKey
from llmgw.tools.toolset import ToolSet

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class MCPEndpoint:
    """The ``/mcp`` ASGI app; ``running()`` is entered by the app's lifespan (the session
    manager's task group)."""

    def __init__(self, tools: ToolSet, tenancy: Tenancy, host: str, version: str) -> None:
        self._tools, self._tenancy = tools, tenancy
        server: Server[Any] = Server("llmgw", version=version, on_list_tools=self._list,
                                     on_call_tool=self._call)
        self._manager = StreamableHTTPSessionManager(
            app=server, json_response=True, security_settings=_security(host))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with self._manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        try:
            self._tenancy.authenticate(request.headers)
        except GatewayError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self._manager.handle_request(scope, receive, send)

    def _key(self, request: Any) -> ApiKey | None:
        return self._tenancy.authenticate(request.headers) if request is not None else None

    async def _list(self, ctx: Any, params: types.PaginatedRequestParams | None,
                    ) -> types.ListToolsResult:
        key = self._key(ctx.request)
        return types.ListToolsResult(tools=[
            types.Tool(name=spec.name, description=spec.description,
                       input_schema=spec.parameters, output_schema=spec.output_schema)
            for spec in self._tools.specs.values()
            if key is None or key.allows_tool(spec.name)])

    async def _call(self, ctx: Any, params: types.CallToolRequestParams,
                    ) -> types.CallToolResult:
        key = self._key(ctx.request)
        headers = ctx.request.headers if ctx.request is not None else {}
        if params.name not in self._tools.specs or (key is not None
                                                    and not key.allows_tool(params.name)):
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        try:
            result = await self._tools.call(
                params.name, params.arguments or {}, depth=depth_of(headers),
                authorization=headers.get("authorization"))
        except GatewayError as exc:  # the model should see why, and may correct its call
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=exc.message)], is_error=True)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=result.content)],
            structured_content=self._tools.specs[params.name].structured(result.output))


def _security(host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection (the protocol's Origin check) for a gateway on loopback,
    as the SDK sets it up; a gateway listening wider names no host list here (a browser
    page's Origin is checked by whatever fronts it)."""
    if host in _LOOPBACK:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)
