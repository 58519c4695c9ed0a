"""Tools over HTTP (llmgw/tools):

    GET  /v1/tools          the OpenAI function tools the caller may use, ready to pass as
                            a chat completion's ``tools``: {"object": "list", "data": [...]}
    POST /v1/tools/{name}   call one: {"arguments": {...} or "<JSON text>"} ->
                            {"object": "tool.result", "tool", "output", "content"}
    POST /admin/tools/{name}/batch
                            (admin) a batched tool's bounds on every replica, from its
                            next batch: {"max_batch_size", "batch_wait_timeout_s"}

With ``auth:`` both need an API key; a key whose ``tools:`` lists names sees and calls
only those (another name is a 404, as for a tool that does not exist).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from llmgw.api.admin import authorize
from llmgw.api.body import json_response, parse_body, read_limited
from llmgw.api.errors import error_response
from llmgw.context import depth_of
from llmgw.errors import GatewayError, InvalidRequest, ToolNotFound
from llmgw.tenancy.keys import ApiKey
from llmgw.tools.toolset import ToolSet


class CallTool(BaseModel):
    """The body of ``POST /v1/tools/{name}``."""

    model_config = ConfigDict(extra="forbid")
    # An object, or the JSON text of one (as a model's tool call carries it); absent: {}.
    arguments: dict[str, Any] | str = {}


class BatchBounds(BaseModel):
    """The body of ``POST /admin/tools/{name}/batch``: either bound, or both."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    batch_wait_timeout_s: float | None = Field(default=None, ge=0, le=60)


def _allowed(request: Request) -> tuple[ToolSet, ApiKey | None]:
    return request.app.state.tools, request.app.state.tenancy.authenticate(request.headers)


async def list_tools(request: Request) -> Response:
    try:
        tools, key = _allowed(request)
    except GatewayError as exc:
        return error_response(exc)
    data = [t for t in tools.openai_tools()
            if key is None or key.allows_tool(t["function"]["name"])]
    return json_response({"object": "list", "data": data})


async def call_tool(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        tools, key = _allowed(request)
        if key is not None and not key.allows_tool(name):
            raise ToolNotFound(f"no tool named {name!r}", param="name")
        tools.spec(name)  # an unknown tool is a 404 before its body is read
        body = parse_body(CallTool, await read_limited(request,
                                                       request.app.state.max_body_bytes))
        result = await tools.call(name, body.arguments, depth=depth_of(request.headers),
                                  authorization=request.headers.get("authorization"))
    except GatewayError as exc:
        return error_response(exc)
    return json_response(result.as_dict())


async def set_batch_bounds(request: Request) -> Response:
    name = request.path_params["name"]
    try:
        authorize(request)
        tools: ToolSet = request.app.state.tools
        spec = tools.spec(name)
        if spec.batched is None:
            raise InvalidRequest(f"tool {name!r} is not batched", param="name")
        body = parse_body(BatchBounds, await read_limited(request,
                                                          request.app.state.max_body_bytes))
        bounds = body.model_dump(exclude_none=True)
        await tools.deployments[spec.deployment].set_batch_bounds(spec.method, bounds)
    except GatewayError as exc:
        return error_response(exc)
    return json_response({"tool": name, **bounds})
