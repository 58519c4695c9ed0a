"""The fake engine's answers beyond chat and completions, each deterministic and shaped as
vLLM's server shapes them: /v1/embeddings, /v1/responses (JSON and SSE events),
/tokenize and /detokenize.

- Embeddings: a unit vector per input derived from a hash of the input (8 dimensions, or
  ``dimensions`` up to 4096), as floats or as base64 float32 (``encoding_format``), with
  ``usage.prompt_tokens`` one per word (string inputs) or per id (token-id inputs).
- Responses: the same ``tok0 tok1 ...`` text as chat, ``max_output_tokens`` long,
  usage as ``input_tokens`` / ``output_tokens``; a stream of Responses events that ends
  with ``response.completed`` (no ``[DONE]``), with the per-token delay, counted running
  and aborted like chat streams.
- Tokenizer: one token per character (its code point), so detokenize inverts tokenize.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmgw.engines.embedding_wire import embeddings_answer

if TYPE_CHECKING:
    from llmgw.engines.fake import FakeEngineState

_DIMENSIONS = 8
# More dimensions are answered with this many: a fake need not build huge vectors.
_MAX_DIMENSIONS = 4096
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class BadBody(ValueError):
    """A body the fake cannot use: the client's 400, as a real engine answers."""


def _bad_request(message: str) -> Response:
    return Response(orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                            "param": None, "code": None}}),
                    status_code=400, media_type="application/json")


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def endpoint_routes(state: FakeEngineState) -> list[Route]:
    """The routes this module adds to the fake engine's app."""
    def guarded(handler: Callable[[FakeEngineState, Request, dict[str, Any]],
                                  Coroutine[Any, Any, Response]]) -> Handler:
        async def route(request: Request) -> Response:
            state.last_request = raw = await request.body()
            try:
                body = orjson.loads(raw)
                if not isinstance(body, dict):
                    raise BadBody("request body must be a JSON object")
                return await handler(state, request, body)
            except (orjson.JSONDecodeError, BadBody) as exc:
                return _bad_request(str(exc) or "bad request body")
        return route

    return [Route("/v1/embeddings", guarded(_embeddings), methods=["POST"]),
            Route("/v1/responses", guarded(_responses), methods=["POST"]),
            Route("/tokenize", guarded(_tokenize), methods=["POST"]),
            Route("/detokenize", guarded(_detokenize), methods=["POST"])]


# -- embeddings ---------------------------------------------------------------------


async def _embeddings(state: FakeEngineState, request: Request,
                      body: dict[str, Any]) -> Response:
    inputs = _embedding_inputs(body.get("input"))
    dims = body.get("dimensions") or _DIMENSIONS
    if not isinstance(dims, int) or dims < 1:
        raise BadBody("dimensions must be a positive integer")
    dims = min(dims, _MAX_DIMENSIONS)
    tokens = sum(len(i) if isinstance(i, list) else len(i.split()) for i in inputs)
    state.served += 1
    return _json(embeddings_answer(
        [fake_embedding(item, dims) for item in inputs], body.get("model", state.name),
        tokens, "base64" if body.get("encoding_format") == "base64" else "float"))


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str | list) for v in value):
        return list(value)
    raise BadBody("input must be a string, a list of strings or token ids")


def fake_embedding(item: str | list[int], dims: int) -> list[float]:
    """The fake's embedding of one input: deterministic, unit length."""
    seed = orjson.dumps(item)
    raw = b"".join(hashlib.sha256(seed + i.to_bytes(4, "little")).digest()
                   for i in range((dims + 31) // 32))
    values = [b - 127.5 for b in raw[:dims]]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [v / norm for v in values]


# -- responses ----------------------------------------------------------------------


async def _responses(state: FakeEngineState, request: Request,
                     body: dict[str, Any]) -> Response:
    n = body.get("max_output_tokens") or 16
    if not isinstance(n, int) or not 0 < n <= 1 << 20:
        raise BadBody("max_output_tokens must be a positive integer")
    text = body.get("input")
    words = len(text.split()) if isinstance(text, str) else 4 * len(text or [])
    usage = {"input_tokens": words, "output_tokens": n, "total_tokens": words + n,
             "input_tokens_details": {"cached_tokens": 0}}
    response = _response_object(body.get("model", state.name), n, usage)
    if body.get("stream"):
        return StreamingResponse(counted(state, _response_events(state, response, n)),
                                 media_type="text/event-stream")
    if not await run_or_abort(state, request, state.token_delay_s * n):
        return Response(status_code=499)
    return _json(response)


def _response_object(model: str, n: int, usage: dict[str, Any]) -> dict[str, Any]:
    text = " ".join(f"tok{i}" for i in range(n))
    return {"id": "resp_fake", "object": "response", "created_at": int(time.time()),
            "model": model, "status": "completed", "output": [{
                "type": "message", "id": "msg_fake", "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": usage}


def _event(kind: str, sequence: int, **fields: Any) -> bytes:
    return (b"event: " + kind.encode() + b"\ndata: " +
            orjson.dumps({"type": kind, "sequence_number": sequence, **fields}) + b"\n\n")


async def _response_events(state: FakeEngineState, done: dict[str, Any],
                           n: int) -> AsyncIterator[bytes]:
    """The events vLLM sends, in its order: created, in_progress, the message item and its
    text part opened, a delta per token, both closed, completed."""
    item, part = done["output"][0], done["output"][0]["content"][0]
    at = {"item_id": item["id"], "output_index": 0}
    opened = {**item, "status": "in_progress", "content": []}
    yield _event("response.created", 0, response={**done, "status": "in_progress",
                                                   "output": [], "usage": None})
    yield _event("response.in_progress", 1, response={**done, "status": "in_progress",
                                                       "output": [], "usage": None})
    yield _event("response.output_item.added", 2, output_index=0, item=opened)
    yield _event("response.content_part.added", 3, **at, content_index=0,
                 part={**part, "text": ""})
    for i in range(n):
        if state.token_delay_s:
            await asyncio.sleep(state.token_delay_s)
        yield _event("response.output_text.delta", 4 + i, **at, content_index=0,
                     delta=f"tok{i} " if i < n - 1 else f"tok{i}")
    yield _event("response.output_text.done", n + 4, **at, content_index=0,
                 text=part["text"])
    yield _event("response.content_part.done", n + 5, **at, content_index=0, part=part)
    yield _event("response.output_item.done", n + 6, output_index=0, item=item)
    yield _event("response.completed", n + 7, response=done)


async def counted(state: FakeEngineState, events: AsyncIterator[bytes]
                  ) -> AsyncIterator[bytes]:
    """``events`` streamed as one request the engine runs: counted as running meanwhile,
    then as served when the last went out, or as aborted when the client left first."""
    state.running += 1
    finished = False
    try:
        async for event in events:
            yield event
        finished = True
        state.served += 1
    finally:
        state.running -= 1
        if not finished:
            state.aborted += 1


async def run_or_abort(state: FakeEngineState, request: Request, seconds: float) -> bool:
    """Spend ``seconds`` "generating", counted as running; False (counted as aborted) when
    the client leaves first."""
    state.running += 1
    try:
        work = asyncio.ensure_future(asyncio.sleep(seconds))
        gone = asyncio.ensure_future(_wait_disconnect(request))
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            state.aborted += 1
            return False
        gone.cancel()
    finally:
        state.running -= 1
    state.served += 1
    return True


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -- tokenizer ----------------------------------------------------------------------


async def _tokenize(state: FakeEngineState, request: Request,
                    body: dict[str, Any]) -> Response:
    prompt, messages = body.get("prompt"), body.get("messages")
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(messages, list):
        text = "".join(f"<{m.get('role')}>{m.get('content') or ''}" for m in messages
                       if isinstance(m, dict))
    else:
        raise BadBody("give `prompt` (a string) or `messages`")
    tokens = [ord(c) for c in text]
    return _json({"count": len(tokens), "max_model_len": 1 << 20, "tokens": tokens,
                  "token_strs": list(text) if body.get("return_token_strs") else None})


async def _detokenize(state: FakeEngineState, request: Request,
                      body: dict[str, Any]) -> Response:
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and t >= 0 for t in tokens):
        raise BadBody("tokens must be a list of token ids")
    # An id that is no character (past Unicode, or a lone surrogate) reads as U+FFFD, as
    # a real tokenizer shows bytes that are no text.
    return _json({"prompt": "".join(chr(t) if t <= 0x10FFFF and not 0xD800 <= t < 0xE000
                                    else "\ufffd" for t in tokens)})
