"""The server-side tool loop's pure parts: which hosted tools a chat completion asks for,
the request each round sends, a round's answer (from JSON or from stream chunks), and
usage summed over rounds. The driver (llmgw/api/tool_loop.py) does the I/O.

A request opts in with a tool entry naming the gateway as an MCP server, in LiteLLM's
shape or OpenAI Responses' (``allowed_tools`` a list of names or ``{"tool_names": [...]}``):

    {"type": "mcp", "server_label": "llmgw", "allowed_tools": ["weather"],
     "require_approval": "never", "max_tool_rounds": 4}

``max_tool_rounds`` (an llmgw extension, default 8) bounds the rounds of hosted calls;
after that many the model is asked once more with ``tool_choice: "none"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmgw.errors import InvalidRequest
from llmgw.tools.schema import ToolSpec

HOSTED_LABEL = "llmgw"
DEFAULT_ROUNDS = 8
MAX_ROUNDS = 32


@dataclass(frozen=True, slots=True)
class HostedTools:
    """What a request asked of the gateway's tools: names (None: all) and the round cap."""

    allowed: frozenset[str] | None
    max_rounds: int


def hosted_tools(parsed: Mapping[str, Any]) -> HostedTools | None:
    """The request's hosted-tool entry, None when it has none. Raises InvalidRequest
    naming the field for an entry llmgw cannot serve."""
    tools = parsed.get("tools")
    if not isinstance(tools, list):
        return None
    entries = [(i, t) for i, t in enumerate(tools)
               if isinstance(t, dict) and t.get("type") == "mcp"]
    if not entries:
        return None
    if len(entries) > 1:
        raise InvalidRequest("tools: one entry of type 'mcp' at most", param="tools")
    if parsed.get("n") not in (None, 1):
        raise InvalidRequest("n: a request that names the gateway's tools gets one choice",
                             param="n")
    index, entry = entries[0]
    where = f"tools[{index}]"
    if entry.get("server_label") != HOSTED_LABEL:
        raise InvalidRequest(f"{where}.server_label: must be {HOSTED_LABEL!r} (the gateway's "
                             "own tools; remote MCP servers are not called)",
                             param=f"{where}.server_label")
    if entry.get("require_approval", "never") != "never":
        raise InvalidRequest(f"{where}.require_approval: only 'never' is supported",
                             param=f"{where}.require_approval")
    rounds = entry.get("max_tool_rounds", DEFAULT_ROUNDS)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= MAX_ROUNDS:
        raise InvalidRequest(f"{where}.max_tool_rounds: must be an integer in 1..{MAX_ROUNDS}",
                             param=f"{where}.max_tool_rounds")
    return HostedTools(_allowed(entry.get("allowed_tools"), f"{where}.allowed_tools"), rounds)


def _allowed(value: Any, where: str) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, dict):  # OpenAI Responses: {"tool_names": [...], ...}
        value = value.get("tool_names")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{where}: must be a list of tool names", param=where)
    return frozenset(value)


def offered(hosted: HostedTools, specs: Iterable[ToolSpec],
            visible: Any = lambda name: True) -> list[ToolSpec]:
    """The hosted tools the model is offered: those allowed by the request and visible to
    the caller's key. Raises InvalidRequest for an allowed name that is neither."""
    specs = [s for s in specs if visible(s.name)]
    names = {s.name for s in specs}
    unknown = sorted((hosted.allowed or frozenset()) - names)
    if unknown:
        raise InvalidRequest(f"allowed_tools: no tool named {unknown[0]!r}",
                             param="tools.allowed_tools")
    return [s for s in specs if hosted.allowed is None or s.name in hosted.allowed]


def round_request(parsed: Mapping[str, Any], specs: list[ToolSpec]) -> dict[str, Any]:
    """The request without its ``mcp`` entry and with the hosted tools as function tools
    after the client's own (a client tool named like a hosted one is refused)."""
    own = [t for t in parsed.get("tools") or [] if not (isinstance(t, dict)
                                                         and t.get("type") == "mcp")]
    names = {str(t["function"].get("name")) for t in own
             if isinstance(t, dict) and isinstance(t.get("function"), dict)}
    clash = sorted(names & {s.name for s in specs})
    if clash:
        raise InvalidRequest(f"tools: {clash[0]!r} is both a tool of the request and a hosted "
                             "tool", param="tools")
    return {**parsed, "tools": [*own, *(s.openai() for s in specs)]}


@dataclass(slots=True)
class Turn:
    """One round's answer: its text, tool calls (OpenAI's shape) and finish reason."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None

    def hosted_only(self, hosted: set[str]) -> bool:
        """Whether every call is to a hosted tool (then the gateway runs them)."""
        return bool(self.tool_calls) and all(
            c.get("function", {}).get("name") in hosted for c in self.tool_calls)

    def assistant_message(self) -> dict[str, Any]:
        return {"role": "assistant", "content": self.content, "tool_calls": self.tool_calls}


def turn_of(completion: Mapping[str, Any]) -> Turn:
    """A non-streamed chat completion's first choice."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    return Turn(message.get("content"), list(message.get("tool_calls") or []),
                choice.get("finish_reason"))


class StreamTurn:
    """A streamed round, chunk by chunk: content deltas go on to the client at once; tool
    call fragments and the finish reason are held until the round ends."""

    def __init__(self) -> None:
        self.turn = Turn()
        self._calls: dict[int, dict[str, Any]] = {}
        self._text: list[str] = []

    def add(self, chunk: Mapping[str, Any]) -> str | None:
        """The content this chunk adds (to forward), if any."""
        choices = chunk.get("choices") or []
        if not choices:
            return None
        choice = choices[0]
        delta = choice.get("delta") or {}
        for fragment in delta.get("tool_calls") or []:
            self._add_call(fragment)
        if choice.get("finish_reason"):
            self.turn.finish_reason = choice["finish_reason"]
        content = delta.get("content")
        if content:
            self._text.append(content)
            return str(content)
        return None

    def _add_call(self, fragment: Mapping[str, Any]) -> None:
        call = self._calls.setdefault(int(fragment.get("index", 0)), {
            "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if fragment.get("id"):
            call["id"] = fragment["id"]
        function = fragment.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    def done(self) -> Turn:
        self.turn.tool_calls = [self._calls[i] for i in sorted(self._calls)]
        self.turn.content = "".join(self._text) or None
        return self.turn


def add_usage(total: dict[str, int], usage: Mapping[str, Any] | None) -> None:
    """Sum the token counts of one round into ``total``."""
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = (usage or {}).get(name)
        if isinstance(value, int):
            total[name] = total.get(name, 0) + value
