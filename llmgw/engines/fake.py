"""A deterministic OpenAI-compatible engine server for tests and benchmarks.

It is a stand-in, not an engine: it answers ``tok0 tok1 ...`` (one token per word, as
many as ``max_tokens``, default 16) instantly or with a fixed per-token delay, counts the
requests it is running (``/metrics``), shows the last request body it got
(``/fake/last_request``) and the W3C trace headers that came with it (``/fake/last_trace``),
loads and unloads LoRA adapters by name as vLLM's runtime API does (nothing is read: the
answer stays the same), and notices when a client goes away, so tests can
prove the gateway aborts engine requests. It also answers embeddings, the Responses API
and vLLM's tokenizer routes (``fake_endpoints``). Run it as
``python -m llmgw.engines.fake --port P [--token-delay-ms D] [--fail-status S]``. Tool
calls are scripted (llmgw.engines.fake_tools): with ``--scripted-tool-calls`` it calls
the tools a request offers, as a model would; without it, when the request asks in words.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmgw.engines.fake_endpoints import counted, endpoint_routes, run_or_abort
from llmgw.engines.fake_tools import finish_reason, marked_turn, message_deltas, scripted_turn


class FakeEngineState:
    def __init__(self, name: str, token_delay_s: float, fail_status: int | None) -> None:
        self.name = name
        self.token_delay_s = token_delay_s
        self.fail_status = fail_status
        self.running = 0
        self.aborted = 0
        self.served = 0
        self.last_request: bytes = b"{}"
        # traceparent / tracestate of the last generation request (tracing tests).
        self.last_trace: dict[str, str | None] = {"traceparent": None, "tracestate": None}
        self.adapters: dict[str, str] = {}  # LoRA adapter name -> the path it was given
        # Several nodes (vLLM's --nnodes): rank 0 lists the ranks that joined it.
        self.nnodes, self.master_port = 1, 0
        self.joined: list[int] = []
        self.scripted_tool_calls = False
        # Reported as usage.prompt_tokens_details.cached_tokens (at most the prompt) when
        # set: an engine whose prefix cache holds this much, e.g. 0 for one that evicted
        # everything the gateway's prefix index remembers.
        self.cached_tokens: int | None = None


def _chunk(rid: str, model: str, created: int, choice: dict[str, Any] | None,
           usage: dict[str, int] | None = None, chat: bool = True) -> bytes:
    body: dict[str, Any] = {
        "id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created, "model": model, "choices": [choice] if choice else [],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def create_fake_app(state: FakeEngineState) -> Starlette:
    async def generate(request: Request) -> Response:
        if state.fail_status is not None:
            return Response(orjson.dumps({"error": {"message": "injected failure",
                            "type": "server_error", "param": None, "code": None}}),
                            status_code=state.fail_status, media_type="application/json")
        raw = state.last_request = await request.body()
        state.last_trace = {name: request.headers.get(name)
                            for name in ("traceparent", "tracestate")}
        try:
            body = orjson.loads(raw)
            n = _max_tokens(body)
            prompt_tokens = _prompt_tokens(body)
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            # Like a real engine: a body it cannot use is the client's 400, never a 500.
            return Response(b'{"error":{"message":"bad request body","type":'
                            b'"invalid_request_error","param":null,"code":null}}', 400,
                            media_type="application/json")
        chat = request.url.path.endswith("/chat/completions")
        if chat:  # a tool call, scripted (fake_tools)
            turn = scripted_turn(body) if state.scripted_tool_calls else marked_turn(body)
            if turn is not None:
                return _scripted(state, body, turn, prompt_tokens)
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                 "total_tokens": prompt_tokens + n}
        if state.cached_tokens is not None:
            usage["prompt_tokens_details"] = {
                "cached_tokens": min(state.cached_tokens, prompt_tokens)}
        if body.get("stream"):
            return StreamingResponse(counted(state, _stream(state, body, n, usage, chat)),
                                     media_type="text/event-stream")
        return await _complete(state, request, body, n, usage, chat)

    async def metrics(request: Request) -> Response:
        text = (f"llmgw_engine_requests_running {state.running}\n"
                f"llmgw_engine_requests_aborted_total {state.aborted}\n"
                f"llmgw_engine_requests_served_total {state.served}\n")
        return Response(text, media_type="text/plain")

    async def health(request: Request) -> Response:
        return Response(b"{}", media_type="application/json")

    async def models(request: Request) -> Response:
        adapters = [{"id": name, "object": "model", "created": 0, "owned_by": "fake",
                     "root": path, "parent": state.name} for name, path in state.adapters.items()]
        return Response(orjson.dumps({"object": "list", "data": [
            {"id": state.name, "object": "model", "created": 0, "owned_by": "fake"},
            *adapters]}), media_type="application/json")

    async def load_adapter(request: Request) -> Response:
        body = orjson.loads(await request.body())
        name = str(body["lora_name"])
        if name in state.adapters:  # as vLLM: a second load of a name is refused
            return Response(orjson.dumps({"error": {
                "message": f"The lora adapter '{name}' has already been loaded.",
                "type": "BadRequestError", "param": None, "code": 400}}),
                status_code=400, media_type="application/json")
        state.adapters[name] = str(body["lora_path"])
        return Response(b"Success", media_type="text/plain")

    async def unload_adapter(request: Request) -> Response:
        state.adapters.pop(str(orjson.loads(await request.body())["lora_name"]), None)
        return Response(b"Success", media_type="text/plain")

    async def last_request(request: Request) -> Response:
        return Response(state.last_request, media_type="application/json")

    async def last_trace(request: Request) -> Response:
        return Response(orjson.dumps(state.last_trace), media_type="application/json")

    async def topology(request: Request) -> Response:
        return Response(orjson.dumps({"nnodes": state.nnodes, "joined": sorted(state.joined)}),
                        media_type="application/json")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        master = await _serve_master(state) if state.nnodes > 1 else None
        yield
        if master is not None:
            master.close()

    return Starlette(lifespan=lifespan, routes=[
        Route("/fake/last_request", last_request), Route("/fake/last_trace", last_trace),
        Route("/fake/topology", topology),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/metrics", metrics), Route("/health", health), Route("/v1/models", models),
        *endpoint_routes(state),
        Route("/v1/load_lora_adapter", load_adapter, methods=["POST"]),
        Route("/v1/unload_lora_adapter", unload_adapter, methods=["POST"]),
    ])


def _max_tokens(body: Any) -> int:
    value = body.get("max_completion_tokens") or body.get("max_tokens") or 16
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 1 << 20:
        raise ValueError("max_tokens must be a positive integer")
    return value


def _prompt_tokens(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if isinstance(messages, list):
        return sum(len(str(m.get("content", "")).split()) + 4 if isinstance(m, dict) else 4
                   for m in messages)
    return len(str(body.get("prompt", "")).split())


async def _stream(state: FakeEngineState, body: dict[str, Any], n: int,
                  usage: dict[str, int], chat: bool) -> AsyncIterator[bytes]:
    rid, model, created = "fake-1", body.get("model", state.name), int(time.time())
    if chat:
        yield _chunk(rid, model, created, {"index": 0, "delta": {"role": "assistant",
                     "content": ""}, "finish_reason": None})
    for i in range(n):
        if state.token_delay_s:
            await asyncio.sleep(state.token_delay_s)
        piece = f"tok{i} " if i < n - 1 else f"tok{i}"
        choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat
                  else {"index": 0, "text": piece, "finish_reason": None})
        yield _chunk(rid, model, created, choice, chat=chat)
    last = ({"index": 0, "delta": {}, "finish_reason": "length"} if chat
            else {"index": 0, "text": "", "finish_reason": "length"})
    yield _chunk(rid, model, created, last, chat=chat)
    if (body.get("stream_options") or {}).get("include_usage"):
        yield _chunk(rid, model, created, None, usage, chat=chat)
    yield b"data: [DONE]\n\n"


async def _complete(state: FakeEngineState, request: Request, body: dict[str, Any], n: int,
                    usage: dict[str, int], chat: bool) -> Response:
    if not await run_or_abort(state, request, state.token_delay_s * n):
        return Response(status_code=499)
    text = " ".join(f"tok{i}" for i in range(n))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text},
               "finish_reason": "length"} if chat
              else {"index": 0, "text": text, "finish_reason": "length"})
    return Response(orjson.dumps({
        "id": "fake-1", "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()), "model": body.get("model", state.name),
        "choices": [choice], "usage": usage,
    }), media_type="application/json")


def _scripted(state: FakeEngineState, body: dict[str, Any], turn: dict[str, Any],
              prompt_tokens: int) -> Response:
    rid, model, created = "fake-1", body.get("model", state.name), int(time.time())
    deltas = message_deltas(turn)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(deltas),
             "total_tokens": prompt_tokens + len(deltas)}
    state.served += 1
    if not body.get("stream"):
        return Response(orjson.dumps({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": turn, "finish_reason": finish_reason(turn)}],
            "usage": usage}), media_type="application/json")
    events = [_chunk(rid, model, created, {"index": 0, "delta": d, "finish_reason": None})
              for d in deltas]
    events.append(_chunk(rid, model, created, {"index": 0, "delta": {},
                                               "finish_reason": finish_reason(turn)}))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(_chunk(rid, model, created, None, usage))
    return Response(b"".join(events) + b"data: [DONE]\n\n", media_type="text/event-stream")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="fake")
    parser.add_argument("--model", default="fake", help="ignored; accepted like real engines")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--cached-tokens", type=int, default=None,
                        help="report this many prompt tokens cached (at most the prompt)")
    parser.add_argument("--scripted-tool-calls", action="store_true",
                        help="call the tools a request offers (llmgw.engines.fake_tools)")
    # An engine over several nodes, with vLLM's flags: rank 0 serves and listens on the
    # master port; other ranks (--headless) join it there and serve nothing.
    parser.add_argument("--nnodes", type=int, default=1)
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, default=0)
    parser.add_argument("--headless", action="store_true")
    args = parser.parse_args()
    if args.headless:
        asyncio.run(_join_master(args.master_addr, args.master_port, args.node_rank))
        return
    state = FakeEngineState(args.served_model_name, args.token_delay_ms / 1000, args.fail_status)
    state.nnodes, state.master_port = args.nnodes, args.master_port
    state.scripted_tool_calls = args.scripted_tool_calls
    state.cached_tokens = args.cached_tokens
    uvicorn.run(create_fake_app(state), host=args.host, port=args.port, log_level="warning",
                access_log=False, http="httptools", loop="uvloop")


async def _serve_master(state: FakeEngineState) -> asyncio.Server:
    """Rank 0: ranks that join on the master port are listed in /fake/topology."""
    async def joined(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        state.joined.append(int(line.decode().strip() or -1))
        await reader.read()  # held open: the rank lives as long as its connection

    return await asyncio.start_server(joined, "0.0.0.0", state.master_port)


async def _join_master(addr: str, port: int, rank: int) -> None:
    """A headless rank: join rank 0, then live until it goes away (as vLLM's workers do)."""
    for _ in range(600):  # rank 0 may start after this one: retry for ~60 s
        try:
            reader, writer = await asyncio.open_connection(addr, port)
            break
        except OSError:
            await asyncio.sleep(0.1)
    else:
        raise SystemExit(f"rank {rank}: master {addr}:{port} never answered")
    writer.write(f"{rank}\n".encode())
    await writer.drain()
    await reader.read()


if __name__ == "__main__":
    main()
