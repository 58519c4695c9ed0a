"""Scripted tool calls for the fake engine, in OpenAI's wire format, so that agent
frameworks can be driven through the gateway without a model that really calls tools.

The script, for a chat request that carries ``tools``:

- the last message is the user's and holds ``[[call NAME {json arguments}]]`` (one or
  more, NAME among the request's tools): the answer is those tool calls
  (``finish_reason: "tool_calls"``), as a message with ``tool_calls`` or, streamed, as
  ``delta.tool_calls`` chunks (the first naming the call, the next ones carrying the
  arguments in pieces), as OpenAI sends them;
- the last message is a tool result: the answer is the text ``tool said: <its content>``;
- anything else is answered as usual (``tok0 tok1 ...``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

CALL = re.compile(r"\[\[call ([A-Za-z0-9_-]+)\s*(\{.*?\})?\]\]", re.DOTALL)
# Streamed arguments arrive in pieces of this many characters.
_PIECE = 8


@dataclass(frozen=True, slots=True)
class ScriptedTurn:
    """What the script answers: tool calls (name, arguments JSON) or a text."""

    calls: tuple[tuple[str, str], ...] = ()
    text: str = ""


def scripted_tool_turn(body: dict[str, Any]) -> ScriptedTurn | None:
    """The scripted answer to a chat body, or None when the script does not apply."""
    tools, messages = body.get("tools"), body.get("messages")
    if not isinstance(tools, list) or not tools or not isinstance(messages, list) \
            or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") == "tool":
        return ScriptedTurn(text=f"tool said: {_text(last.get('content'))}")
    names = {t.get("function", {}).get("name") for t in tools if isinstance(t, dict)}
    calls = tuple((name, args or "{}") for name, args in CALL.findall(_text(last.get("content")))
                  if name in names)
    return ScriptedTurn(calls=calls) if last.get("role") == "user" and calls else None


def scripted_answer(turn: ScriptedTurn, body: dict[str, Any], model: str,
                    usage: dict[str, int]) -> Response:
    """The turn as chat.completion JSON or, for ``stream: true``, as SSE chunks."""
    usage = {**usage, "completion_tokens": len(turn.text.split()) + len(turn.calls),
             "total_tokens": usage["prompt_tokens"] + len(turn.text.split()) + len(turn.calls)}
    reason = "tool_calls" if turn.calls else "stop"
    if body.get("stream"):
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_events(turn, model, reason, usage if with_usage else None),
                                 media_type="text/event-stream")
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.calls:
        message["tool_calls"] = [
            {"id": _call_id(i), "type": "function",
             "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(turn.calls)]
    return Response(orjson.dumps({
        "id": "fake-tools", "object": "chat.completion", "created": int(time.time()),
        "model": model, "usage": usage,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
    }), media_type="application/json")


def _events(turn: ScriptedTurn, model: str, reason: str,
            usage: dict[str, int] | None) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any] | None, finish: str | None = None,
              with_usage: dict[str, int] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": "fake-tools", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [] if delta is None else [
                {"index": 0, "delta": delta, "finish_reason": finish}]}
        if with_usage is not None:
            payload["usage"] = with_usage
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    created = int(time.time())
    yield chunk({"role": "assistant", "content": turn.text or None})
    for index, (name, args) in enumerate(turn.calls):
        yield chunk({"tool_calls": [{"index": index, "id": _call_id(index), "type": "function",
                                     "function": {"name": name, "arguments": ""}}]})
        for at in range(0, len(args), _PIECE):
            yield chunk({"tool_calls": [{"index": index,
                                         "function": {"arguments": args[at:at + _PIECE]}}]})
    yield chunk({}, reason)
    if usage is not None:
        yield chunk(None, with_usage=usage)
    yield b"data: [DONE]\n\n"


def _call_id(index: int) -> str:
    return f"call_fake_{index}"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
