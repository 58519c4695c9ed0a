"""A fake SGLang server in prefill-decode disaggregation mode, for tests.

A fake: SGLang needs a GPU (and RDMA or NIXL for the KV transfer). It extends
tests/fakes/sglang_server.py (SGLang's OpenAI routes, chunk shapes, metrics, abort by
``rid``) with what a ``--disaggregation-mode prefill|decode`` server does, as of SGLang
v0.5 (``srt/disaggregation/{prefill,decode}.py``, ``srt/disaggregation/common/conn.py``'s
bootstrap server) and as SGLang's router drives it (``sgl-router``'s ``pd_router.rs``):

- Both legs get the same request with ``bootstrap_host``, ``bootstrap_port`` and
  ``bootstrap_room`` (lists of one entry per sequence when ``n > 1``). A request without
  them is refused with 400 (the fake's wording).
- The prefill server listens on ``--disaggregation-bootstrap-port`` besides its HTTP port.
  It computes the prompt's KV, offers it under the room, and answers its own request (one
  token) once the decode server has taken the KV, or fails after the bootstrap timeout.
- The decode server connects to ``bootstrap_host:bootstrap_port``, waits for the room's
  KV (the fake's transfer is ``GET /kv/{room}`` on the bootstrap port, long-polled; the
  real one goes over Mooncake / NIXL after a ``/route`` handshake), checks that it is the
  KV of its own prompt, then decodes. If the KV never comes (the prefill server is dead or
  hung), the request fails after the bootstrap timeout: 500 when not streamed, an SSE
  error event then ``[DONE]`` when streamed (SGLang sends the stream's headers at once).
  Its first chunk, as SGLang's, comes with the first token.

``GET /fake/pd`` (not SGLang's) reports what the server saw, for tests: each request's
bootstrap fields, rooms whose KV was offered or received, requests decoding (``running``)
and all requests it still tracks, waiting for KV included (``tracked``). Run it as
``python -m tests.fakes.sglang_pd --port P --disaggregation-mode prefill
--disaggregation-bootstrap-port B [--token-delay-ms D] [--bootstrap-timeout-s S]``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.sglang_server import (
    STREAM_ABORT_DELAY_S,
    Chunks,
    FakeSGLang,
    Job,
    _error,
    _invalid,
    _json,
    _prompt_words,
    _usage,
    create_app,
)

BOOTSTRAP_FIELDS = ("bootstrap_host", "bootstrap_port", "bootstrap_room")


@dataclass
class Transfer:
    """One sequence's KV, as the prefill side offers it for a room."""

    prompt: tuple[str, ...]
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    taken: asyncio.Event = field(default_factory=asyncio.Event)


class FakeSGLangPD(FakeSGLang):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.mode: str = args.disaggregation_mode
        self.bootstrap_timeout_s: float = args.bootstrap_timeout_s
        self.transfers: dict[int, Transfer] = {}
        self.pd_info: dict[str, tuple[list[str], list[int], list[int], tuple[str, ...]]] = {}
        self.errors: dict[str, str] = {}
        self.seen: list[dict[str, Any]] = []
        self.received: list[int] = []

    def transfer(self, room: int) -> Transfer:
        return self.transfers.setdefault(room, Transfer(()))

    async def _run(self, job: Job) -> None:
        hosts, ports, rooms, prompt = self.pd_info.pop(job.rid)
        try:
            if self.mode == "prefill":
                await self._offer(rooms, prompt)
                job.length = 1  # the prefill server's own answer is its first token
            else:
                await self._receive(hosts, ports, rooms, prompt)
        except asyncio.CancelledError:
            self._finish(job, "abort")
            return
        except (TimeoutError, httpx.HTTPError, ValueError) as exc:
            self.errors[job.rid] = f"KV transfer failed for room(s) {rooms}: {exc!r}"
            self._finish(job, "abort")
            return
        await super()._run(job)

    async def _offer(self, rooms: list[int], prompt: tuple[str, ...]) -> None:
        for room in rooms:
            transfer = self.transfer(room)
            transfer.prompt = prompt
            transfer.ready.set()
        async with asyncio.timeout(self.bootstrap_timeout_s):
            for room in rooms:
                await self.transfers[room].taken.wait()
        for room in rooms:
            self.transfers.pop(room, None)

    async def _receive(self, hosts: list[str], ports: list[int], rooms: list[int],
                       prompt: tuple[str, ...]) -> None:
        async with httpx.AsyncClient(timeout=self.bootstrap_timeout_s) as client:
            for host, port, room in zip(hosts, ports, rooms, strict=True):
                reply = await client.get(f"http://{host}:{port}/kv/{room}")
                reply.raise_for_status()
                if tuple(reply.json()["prompt"]) != prompt:
                    raise ValueError(f"room {room} holds another prompt's KV")
                self.received.append(room)


def _bootstrap(body: dict[str, Any]) -> tuple[list[str], list[int], list[int]] | str:
    """The three fields as lists, or what is wrong with them."""
    values = [body.get(name) for name in BOOTSTRAP_FIELDS]
    if any(v is None for v in values):
        return "disaggregation mode needs bootstrap_host, bootstrap_port and bootstrap_room"
    lists = [v if isinstance(v, list) else [v] for v in values]
    n = body.get("n") or 1
    if len({len(v) for v in lists}) != 1 or (isinstance(values[2], list) and len(lists[2]) != n):
        return f"bootstrap fields must be lists of one entry per sequence (n={n})"
    return lists[0], lists[1], lists[2]


async def _generate(server: FakeSGLangPD, request: Request, chat: bool) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _invalid("JSON decode error")
    prompt = _prompt_words(body, chat) if isinstance(body, dict) else None
    if prompt is None:
        return _invalid("Field required: messages (chat) or prompt (completions)")
    fields = _bootstrap(body)
    if isinstance(fields, str):
        return _error(fields)
    server.seen.append({k: body.get(k) for k in (*BOOTSTRAP_FIELDS, "rid", "stream", "n")})
    rid = str(body.get("rid") or f"req-{len(server.seen)}")
    server.pd_info[rid] = (*fields, prompt)
    job = server.submit(rid, prompt, body.get("max_completion_tokens") or body.get("max_tokens"))
    chunks = Chunks(job, str(body.get("model")), chat)
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_stream(server, chunks, usage), media_type="text/event-stream",
                                 background=BackgroundTask(_delayed_abort, server, rid))
    await _done(job)
    if rid in server.errors:
        return _error(server.errors.pop(rid), "InternalServerError", 500)
    text = " ".join(job.tokens)
    choice: dict[str, Any] = {"index": 0, "finish_reason": job.finished}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return _json({"id": rid, "object": "chat.completion" if chat else "text_completion",
                  "model": chunks.model, "choices": [choice], "usage": _usage(job)})


async def _done(job: Job) -> None:
    while job.finished is None:
        await job.changed.wait()
        job.changed.clear()


async def _delayed_abort(server: FakeSGLangPD, rid: str) -> None:
    await asyncio.sleep(STREAM_ABORT_DELAY_S)  # SGLang's create_abort_task
    server.abort_request(rid)


async def _stream(server: FakeSGLangPD, chunks: Chunks, usage: bool) -> AsyncIterator[bytes]:
    job, sent = chunks.job, 0
    while True:
        await job.changed.wait()
        job.changed.clear()
        if job.rid in server.errors:
            error = {"message": server.errors.pop(job.rid), "type": "InternalServerError",
                     "param": None, "code": 500}
            yield b"data: " + orjson.dumps({"error": error}) + b"\n\ndata: [DONE]\n\n"
            return
        new, sent = job.tokens[sent:], len(job.tokens)
        if chunks.chat and new and sent == len(new):
            yield chunks.role()  # SGLang's first chunk comes with the first output
        for i, token in enumerate(new):
            yield chunks.text(token if sent - len(new) + i == 0 else " " + token)
        if job.finished is not None:
            break
    if chunks.chat:
        yield chunks.finish(job.finished)
    if usage:
        yield chunks.usage()
    yield b"data: [DONE]\n\n"


def bootstrap_app(server: FakeSGLangPD) -> Starlette:
    async def kv(request: Request) -> Response:
        transfer = server.transfer(int(request.path_params["room"]))
        try:
            async with asyncio.timeout(server.bootstrap_timeout_s):
                await transfer.ready.wait()
        except TimeoutError:
            return Response(status_code=404)
        transfer.taken.set()
        return _json({"prompt": list(transfer.prompt)})

    async def route(request: Request) -> Response:
        return _json({"mode": server.mode})

    return Starlette(routes=[Route("/kv/{room}", kv), Route("/route", route)])


def pd_app(server: FakeSGLangPD) -> Starlette:
    app = create_app(server)

    async def chat(request: Request) -> Response:
        return await _generate(server, request, chat=True)

    async def completions(request: Request) -> Response:
        return await _generate(server, request, chat=False)

    async def report(request: Request) -> Response:
        return _json({"mode": server.mode, "seen": server.seen, "received": server.received,
                      "offered": sorted(server.transfers), "running": len(server.running),
                      "tracked": len(server.rid_to_state)})

    app.router.routes[:0] = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/fake/pd", report),
    ]
    return app


async def serve(args: argparse.Namespace) -> None:
    import uvicorn

    server = FakeSGLangPD(args)
    apps = [(pd_app(server), args.port)]
    if args.disaggregation_mode == "prefill":
        apps.append((bootstrap_app(server), args.disaggregation_bootstrap_port))
    # Streams that wait for KV would hold a graceful shutdown for the bootstrap timeout.
    servers = [uvicorn.Server(uvicorn.Config(app, host=args.host, port=port,
                                             log_level="warning", access_log=False,
                                             timeout_graceful_shutdown=1))
               for app, port in apps]
    # Each server takes over SIGTERM from the one before: when one stops, stop all.
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake SGLang P/D server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="default")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--max-total-tokens", type=int, default=20480)
    parser.add_argument("--max-running-requests", type=int, default=64)
    parser.add_argument("--enable-metrics", action="store_true")
    parser.add_argument("--disconnect-mode", choices=["delayed", "zombie"], default="delayed")
    parser.add_argument("--disaggregation-mode", choices=["prefill", "decode"], required=True)
    parser.add_argument("--disaggregation-bootstrap-port", type=int, default=8998)
    # SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT, shortened for tests.
    parser.add_argument("--bootstrap-timeout-s", type=float, default=30.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
