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

_MAX_CACHED = 512  # distinct answers kept; the cache is cleared when it is full
_MAX_HEAD = 64 * 1024  # request line + headers
_MAX_BODY = 8 * 1024 * 1024
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 413: b"Payload Too Large"}


# --- answers (pure; cached by key) ------------------------------------------------------


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(status: int, content_type: bytes, length: int | None) -> bytes:
    framing = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
    return b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n%s\r\n\r\n" % (
        status, _REASONS.get(status, b"Error"), content_type, framing)


def json_answer(status: int, body: bytes) -> list[bytes]:
    return [_head(status, b"application/json", len(body)) + body]


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
    head = _head(200, b"text/event-stream", None)
    return [head, *(_http_chunk(e) for e in events), b"0\r\n\r\n"]


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
        if method == b"GET" and path == "/v1/models":
            return self.models, False
        if method == b"GET":
            return self.ok, False
        return self.not_found, False


# --- HTTP/1.1 ---------------------------------------------------------------------------


class Request:
    __slots__ = ("method", "path", "body", "close")

    def __init__(self, method: bytes, path: str, body: bytes, close: bool) -> None:
        self.method, self.path, self.body, self.close = method, path, body, close


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: (body, end) or None while incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        start = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", eol)  # the blank line after optional trailers
            return (b"".join(parts), end + 4) if end >= 0 else None
        if len(buf) < start + size + 2:
            return None
        parts.append(bytes(buf[start:start + size]))
        pos = start + size + 2


def parse_request(buf: bytearray) -> tuple[Request, int] | None:
    """The first complete request in ``buf`` and its length; None while incomplete.
    Raises ValueError on a request this server will not read."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > _MAX_HEAD:
            raise ValueError("request head too large")
        return None
    lines = bytes(buf[:head_end]).split(b"\r\n")
    method, target, version = lines[0].split(b" ", 2)
    length, chunked = 0, False
    close = version == b"HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            close = b"close" in value.lower()
    if length > _MAX_BODY:
        raise ValueError("request body too large")
    path = target.split(b"?", 1)[0].decode("latin-1")
    start = head_end + 4
    if chunked:
        found = _dechunk(buf, start)
        if found is None:
            return None
        return Request(method, path, found[0], close), found[1]
    if len(buf) < start + length:
        return None
    return Request(method, path, bytes(buf[start:start + length]), close), start + length


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
            try:
                found = parse_request(self._buf)
            except ValueError:
                self._transport.writelines(json_answer(413, b"{}"))
                self._transport.close()
                return
            if found is None:
                return
            request, used = found
            del self._buf[:used]
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
