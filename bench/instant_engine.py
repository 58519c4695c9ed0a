"""An instant OpenAI-compatible engine stand-in, used only by the benchmarks in ``bench/``.

It is not an engine and not part of llmgw: it answers every generation request with
``tok0 tok1 ...`` (``max_tokens`` tokens, default 16) as cheaply as a Python server can, so
that a benchmark measures the proxy in front of it and not the engine. It is a raw asyncio
``Protocol`` speaking HTTP/1.1 with keep-alive; answers are precomputed per
(path, model, max_tokens, stream, include_usage) and cached (bounded), so a request costs
one small JSON parse and one ``writelines``.

Routes: POST /v1/chat/completions, POST /v1/completions (stream or not, with a usage
chunk when ``stream_options.include_usage`` is set), GET /health, GET /v1/models. Any
other GET answers ``{}`` (routers probe engine-specific info paths); anything else is 404.
Streams are sent as one HTTP chunk per SSE event; ``--token-delay-ms`` paces them.

    python bench/instant_engine.py --port 9001 [--served-model-name fake]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from http11 import LAST_CHUNK, http_chunk, response_head, take_request

_MAX_CACHED = 512  # distinct answers kept; the cache is cleared when it is full


# --- answers (pure; cached by key) ------------------------------------------------------


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def json_answer(status: int, body: bytes) -> list[bytes]:
    return [response_head(status, "application/json", len(body)) + body]


def _choice(chat: bool, text: str | None, finish: str | None, first: bool = False) -> Any:
    if not chat:
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    delta = {"role": "assistant", "content": ""} if first else {}
    if text is not None:
        delta["content"] = text
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def stream_answer(chat: bool, model: str, n: int, usage: bool) -> list[bytes]:
    """The head, one HTTP chunk per SSE event (OpenAI chunk format), and the last chunk."""
    base = {"id": "instant-1", "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": model}
    events = [_event({**base, "choices": [_choice(chat, None, None, first=True)]})] if chat else []
    for i in range(n):
        piece = f"tok{i} " if i < n - 1 else f"tok{i}"
        events.append(_event({**base, "choices": [_choice(chat, piece, None)]}))
    events.append(_event({**base, "choices": [_choice(chat, None, "length")]}))
    if usage:
        counts = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
        events.append(_event({**base, "choices": [], "usage": counts}))
    events.append(b"data: [DONE]\n\n")
    head = response_head(200, "text/event-stream", None)
    return [head, *(http_chunk(e) for e in events), LAST_CHUNK]


def full_answer(chat: bool, model: str, n: int) -> list[bytes]:
    text = " ".join(f"tok{i}" for i in range(n))
    choice = ({"index": 0, "message": {"role": "assistant", "content": text},
               "logprobs": None, "finish_reason": "length"} if chat
              else {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"})
    body = orjson.dumps({
        "id": "instant-1", "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()), "model": model, "choices": [choice],
        "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n},
    })
    return json_answer(200, body)


class Answers:
    """Precomputed answers keyed by what changes the bytes. Event-loop thread only."""

    def __init__(self, served_model_name: str) -> None:
        self.served_model_name = served_model_name
        self._cache: dict[tuple[str, str, int, bool, bool], list[bytes]] = {}
        models = {"object": "list", "data": [
            {"id": served_model_name, "object": "model", "created": 0, "owned_by": "bench"}]}
        self.models = json_answer(200, orjson.dumps(models))
        self.ok = json_answer(200, b"{}")
        # An empty ExportTraceServiceResponse: every span accepted.
        self.traces_ok = [response_head(200, "application/x-protobuf", 0)]
        self.not_found = json_answer(404, b'{"error":{"message":"not found","type":'
                                          b'"invalid_request_error","param":null,"code":null}}')
        self.bad_json = json_answer(400, b'{"error":{"message":"bad json","type":'
                                         b'"invalid_request_error","param":null,"code":null}}')

    def generation(self, path: str, body: bytes) -> tuple[list[bytes], bool]:
        """(pieces to write, is a stream) for a POST to a generation path."""
        try:
            req = orjson.loads(body)
            n = int(req.get("max_completion_tokens") or req.get("max_tokens") or 16)
            model = str(req.get("model") or self.served_model_name)
            stream = bool(req.get("stream"))
            usage = stream and bool((req.get("stream_options") or {}).get("include_usage"))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return self.bad_json, False
        key = (path, model, n, stream, usage)
        answer = self._cache.get(key)
        if answer is None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            chat = path == "/v1/chat/completions"
            answer = stream_answer(chat, model, n, usage) if stream else full_answer(chat, model, n)
            self._cache[key] = answer
        return answer, stream

    def route(self, method: bytes, path: str, body: bytes) -> tuple[list[bytes], bool]:
        if method == b"POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return self.generation(path, body)
        if method == b"POST" and path == "/v1/traces":  # an OTLP/HTTP sink: spans dropped
            return self.traces_ok, False
        if method == b"GET" and path == "/v1/models":
            return self.models, False
        if method == b"GET":
            return self.ok, False
        return self.not_found, False


# --- HTTP/1.1 (the parsing is http11.py) -----------------------------------------------


class EngineConnection(asyncio.Protocol):
    """One keep-alive client connection. Requests are answered in order; while a paced
    stream is being written, further requests wait in the buffer."""

    def __init__(self, answers: Answers, token_delay_s: float) -> None:
        self._answers = answers
        self._delay = token_delay_s
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are duck-typed, not asyncio.Transport subclasses.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._serve()

    def _serve(self) -> None:
        while self._transport is not None and not self._busy:
            request = take_request(self._buf, self._transport)
            if request is None:
                return
            pieces, stream = self._answers.route(request.method, request.path, request.body)
            if stream and self._delay > 0:
                self._start_paced(pieces, request.close)
                return
            self._transport.writelines(pieces)
            if request.close:
                self._transport.close()

    def _start_paced(self, pieces: list[bytes], close: bool) -> None:
        assert self._transport is not None
        self._busy = True
        self._transport.write(pieces[0])
        rest = iter(pieces[1:])
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if self._transport is None:
                return
            piece = next(rest, None)
            if piece is not None:
                self._transport.write(piece)
                self._timer = loop.call_later(self._delay, tick)
                return
            self._busy = False
            if close:
                self._transport.close()
            else:
                self._serve()

        self._timer = loop.call_later(self._delay, tick)


# --- process ----------------------------------------------------------------------------


async def serve(host: str, port: int, answers: Answers, token_delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: EngineConnection(answers, token_delay_s), host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser(description="instant OpenAI-compatible engine stand-in")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="fake")
    parser.add_argument("--token-delay-ms", type=float, default=0.0,
                        help="pace stream events this far apart (0: write at once)")
    args = parser.parse_args()
    answers = Answers(args.served_model_name)
    # SIGTERM (how the benchmark stops it) ends the process at once; Ctrl-C quietly.
    with contextlib.suppress(KeyboardInterrupt), \
            asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(args.host, args.port, answers, args.token_delay_ms / 1000))


if __name__ == "__main__":
    main()
