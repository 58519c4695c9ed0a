"""Composition: what a tool's code may call while it runs (Ray Serve's handles, over the
gateway's own HTTP API).

    import llmgw.context

    class Planner:
        @llmgw.tool
        async def plan(self, city: str) -> str:
            weather = await llmgw.context.call_tool("weather", {"city": city})
            answer = await llmgw.context.client().chat.completions.create(
                model="demo", messages=[{"role": "user", "content": f"Plan for {weather}"}])
            return answer.choices[0].message.content or ""

Calls go to the gateway that called the tool, with the caller's API key (so a key's
allowlist holds for nested calls too) and one more level of depth: a call at
``MAX_DEPTH`` levels is refused (400 ``tool_depth_exceeded``), so tools that call each
other in a cycle end with an error instead of filling the gateway. The gateway sets the
context per call (a ``ContextVar``: it follows the call into its tasks and threads);
outside a tool call there is no gateway to call and both functions raise RuntimeError.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

# How deep tools (and the models they call) may nest: a call from depth MAX_DEPTH is refused.
MAX_DEPTH = 4
DEPTH_HEADER = "x-llmgw-depth"


@dataclass(frozen=True, slots=True)
class CallContext:
    """Where a tool call came from: the gateway's URL (None: not inside a call), the depth
    a call made from here has, and the caller's ``Authorization`` header."""

    gateway_url: str | None = None
    depth: int = 0
    authorization: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {DEPTH_HEADER: str(self.depth)}
        if self.authorization is not None:
            headers["authorization"] = self.authorization
        return headers


class ToolCallFailed(Exception):
    """A nested ``call_tool`` got an error: ``status`` and the gateway's error object."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"{status}: {error.get('message')}")
        self.status, self.error = status, error


# The default is frozen: never mutated, so sharing it is safe.
_current: ContextVar[CallContext] = ContextVar("llmgw_call_context",
                                               default=CallContext())  # noqa: B039


def current() -> CallContext:
    return _current.get()


def enter(context: CallContext) -> Token[CallContext]:
    """Set by the gateway (or a tool worker) around one call; ``leave`` undoes it."""
    return _current.set(context)


def leave(token: Token[CallContext]) -> None:
    _current.reset(token)


def depth_of(headers: Any) -> int:
    """The depth a request declares (``x-llmgw-depth``); 0 when absent or not a number."""
    value = headers.get(DEPTH_HEADER, "0")
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def _gateway() -> CallContext:
    context = current()
    if context.gateway_url is None:
        raise RuntimeError("llmgw.context is only available inside a tool call")
    return context


def client(**kwargs: Any) -> Any:
    """An ``openai.AsyncOpenAI`` client of the calling gateway (needs the ``openai``
    package), carrying the caller's key and the call depth."""
    import openai

    context = _gateway()
    key = (context.authorization or "").removeprefix("Bearer ").strip() or "unused"
    return openai.AsyncOpenAI(base_url=f"{context.gateway_url}/v1", api_key=key,
                              default_headers={DEPTH_HEADER: str(context.depth)}, **kwargs)


async def call_tool(name: str, arguments: dict[str, Any] | None = None) -> Any:
    """Another tool's output (``POST /v1/tools/{name}``); raises ToolCallFailed."""
    context = _gateway()
    async with aiohttp.ClientSession() as http, http.post(
            f"{context.gateway_url}/v1/tools/{name}",
            data=orjson.dumps({"arguments": arguments or {}}),
            headers={**context.headers(), "content-type": "application/json"}) as response:
        body = orjson.loads(await response.read())
    if response.status != 200:
        raise ToolCallFailed(response.status, body.get("error") or {})
    return body["output"]
