"""The fake engine's scripted tool calls (``--scripted-tool-calls``): a stand-in for a model
that calls tools, in OpenAI's wire format, because no model that runs on a CPU box emits
tool calls on its own. Deterministic:

- a request with function ``tools`` (and ``tool_choice`` not ``"none"``) gets a tool call
  while fewer than N assistant tool-call turns follow the last user message (N:
  ``tool_rounds=N`` in that message, default 1). The tool: the one ``tool_choice`` names,
  else ``call=NAME`` in the user message, else the first. Its arguments come from the
  tool's JSON Schema (required properties: the first enum value, the minimum or 0,
  ``"x"``, false, [] or {});
- after that, the answer is ``final: `` and the last tool message's content.

Without ``--scripted-tool-calls``, a request with function ``tools`` is scripted only when
it asks in words (``marked_turn``), for clients that drive a tool loop themselves
(agent frameworks): ``[[call NAME {json arguments}]]`` in the last user message (one or
more, NAME among the request's tools) gets those calls with those arguments, and a tool
result as the last message gets ``tool said: `` and its content.

Streamed as OpenAI streams tool calls: the call's id and name in the first delta, its
arguments in fragments, then ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_ROUNDS = re.compile(r"tool_rounds=(\d+)")
_MARKED_CALL = re.compile(r"\[\[call ([A-Za-z0-9_-]+)\s*(\{.*?\})?\]\]", re.DOTALL)
_CALL = re.compile(r"call=([A-Za-z0-9_-]+)")


def scripted_turn(body: dict[str, Any]) -> dict[str, Any] | None:
    """The assistant message to answer with, or None when the script has nothing to say
    (no function tools: the usual ``tok0 tok1 ...``)."""
    tools = [t["function"] for t in body.get("tools") or []
             if isinstance(t, dict) and t.get("type") == "function"
             and isinstance(t.get("function"), dict)]
    if not tools or body.get("tool_choice") == "none":
        return None
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    asked = _text(messages[last_user].get("content")) if last_user >= 0 else ""
    made = sum(1 for m in messages[last_user + 1:]
               if m.get("role") == "assistant" and m.get("tool_calls"))
    rounds = int(match.group(1)) if (match := _ROUNDS.search(asked)) else 1
    if made >= rounds:
        results = [m for m in messages if m.get("role") == "tool"]
        return {"role": "assistant",
                "content": "final: " + (_text(results[-1].get("content")) if results else "")}
    tool = _chosen(tools, body.get("tool_choice"), asked)
    arguments = orjson.dumps(_arguments(tool.get("parameters") or {})).decode()
    return {"role": "assistant", "content": None, "tool_calls": [{
        "id": f"call_{made}_{tool['name']}", "type": "function",
        "function": {"name": tool["name"], "arguments": arguments}}]}


def marked_turn(body: dict[str, Any]) -> dict[str, Any] | None:
    """The calls the last user message asks for in ``[[call NAME {json}]]`` markers, or
    the answer to a tool result; None when the request has no tools or asks nothing."""
    tools, messages = body.get("tools"), body.get("messages")
    if not isinstance(tools, list) or not tools or not isinstance(messages, list) \
            or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") == "tool":
        return {"role": "assistant", "content": f"tool said: {_text(last.get('content'))}"}
    names = {t.get("function", {}).get("name") for t in tools if isinstance(t, dict)}
    calls = [(name, args or "{}") for name, args in
             _MARKED_CALL.findall(_text(last.get("content"))) if name in names]
    if last.get("role") != "user" or not calls:
        return None
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_fake_{index}", "type": "function",
         "function": {"name": name, "arguments": args}}
        for index, (name, args) in enumerate(calls)]}


def message_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message as stream deltas, tool calls as OpenAI streams them."""
    calls = message.get("tool_calls")
    if not calls:
        words = str(message["content"]).split(" ")
        return [{"role": "assistant", "content": ""},
                *({"content": w if i == 0 else " " + w} for i, w in enumerate(words))]
    deltas: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        arguments = call["function"]["arguments"]
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        deltas.append({"role": "assistant", "content": None, "tool_calls": [head]}
                      if index == 0 else {"tool_calls": [head]})
        half = len(arguments) // 2
        deltas += [{"tool_calls": [{"index": index, "function": {"arguments": part}}]}
                   for part in (arguments[:half], arguments[half:]) if part]
    return deltas


def finish_reason(message: dict[str, Any]) -> str:
    return "tool_calls" if message.get("tool_calls") else "stop"


def _chosen(tools: list[dict[str, Any]], choice: Any, asked: str) -> dict[str, Any]:
    by_name = {t.get("name"): t for t in tools}
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        if named in by_name:
            return by_name[named]
    match = _CALL.search(asked)
    return by_name.get(match.group(1), tools[0]) if match else tools[0]


def _arguments(schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {name: _value(properties.get(name) or {}) for name in schema.get("required") or []}


def _value(prop: dict[str, Any]) -> Any:
    if prop.get("enum"):
        return prop["enum"][0]
    kind = prop.get("type")
    if kind in ("integer", "number"):
        return prop.get("minimum", 0)
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "object":
        return _arguments(prop)
    return "x"


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list (as agent
    frameworks send tool results)."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)
