"""A fake SGLang server for tests.

A fake: SGLang needs a GPU; this follows its HTTP protocol as of SGLang v0.5 (read from
sgl-project/sglang main, the 0.5.3 to 0.5.19 era: ``srt/entrypoints/http_server.py``,
``srt/entrypoints/openai/{protocol,serving_base,serving_chat,serving_completions}.py``,
``srt/managers/tokenizer_manager.py``, ``srt/metrics/collector.py``). It answers
``tok0 tok1 ...``, one word per token, and reproduces what llmgw depends on:

- ``GET /health`` and ``GET /health_generate``: a one-token generation probe that answers
  after the handler's one-second poll; ``/health`` skips it when the environment sets
  ``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION=0``, as SGLang does.
- ``GET /metrics`` only with ``--enable-metrics``: SGLang's metric names and label style
  (scheduler gauges labelled ``engine_type, model_name, pp_rank, tp_rank``; tokenizer
  counters labelled ``model_name``, each absent until first incremented).
- ``GET /v1/models``; ``POST /v1/chat/completions`` and ``/v1/completions``, streaming or
  not, with SGLang's chunk fields, its ``choices: []`` usage chunk when
  ``stream_options.include_usage`` is set, its flat error body
  ``{"object": "error", "message", "type", "param", "code": 400}`` and its context-length
  messages; the body's ``rid`` field names the request, as in SGLang.
- ``POST /abort_request {"rid": ...}``: aborts the request while the tokenizer still
  tracks it; an unknown rid is a silent no-op with 200, as in SGLang.
- Abort on disconnect, as the real server does it. Requests run in a "scheduler" task
  that does not depend on the HTTP connection. A non-streaming handler notices a gone
  client when it polls: after 4 s without output, or at the output the scheduler forces
  every 50 tokens. A stream relies on the response's background task, which aborts the
  rid 2 s after the response ends. ``--disconnect-mode zombie`` reproduces SGLang
  0.5.18-0.5.19 (sgl-project/sglang#36333): a cancelled stream drops the tokenizer's
  state first, so that delayed abort finds nothing and the request decodes to the end.

Not reproduced: ``sglang:num_running_reqs`` is live here, while SGLang refreshes it when
it logs a batch (every ``--decode-log-interval`` = 40 decode steps, and every 30 s idle);
no tool calls, reasoning, logprobs, ``n > 1`` or LoRA. Run it as
``python -m tests.fakes.sglang_server --port P --served-model-name NAME
[--token-delay-ms D] [--enable-metrics] [--disconnect-mode delayed|zombie]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

# SGLang's own constants (tokenizer_manager, scheduler_output_processor_mixin, http_server).
REQUEST_STATE_WAIT_TIMEOUT_S = 4.0
FORCE_STREAM_INTERVAL = 50
STREAM_ABORT_DELAY_S = 2.0
HEALTH_POLL_S = 1.0
EOS_TOKEN_ID = 2
# Without max_tokens the fake "model" stops by itself, as a real one meets EOS.
NATURAL_LENGTH = 16
TEMPLATE_TOKENS_PER_MESSAGE = 5


@dataclass
class Job:
    """One request inside the fake scheduler; outlives its HTTP connection."""

    rid: str
    prompt_tokens: int
    cached_tokens: int
    length: int
    natural_finish: str
    tokens: list[str] = field(default_factory=list)
    finished: str | None = None  # "length", "stop" or "abort"
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class FakeSGLang:
    """The scheduler, the tokenizer manager's request table and the metrics."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.served_model_name
        self.delay_s: float = args.token_delay_ms / 1000
        self.context_len: int = args.context_length
        self.max_total_tokens: int = args.max_total_tokens
        self.enable_metrics: bool = args.enable_metrics
        self.zombie: bool = args.disconnect_mode == "zombie"
        self.slots = asyncio.Semaphore(args.max_running_requests)
        self.rid_to_state: dict[str, Job] = {}
        self.running: list[Job] = []
        self.queued = 0
        self.counters: dict[str, float] = {}
        self.last_hit_rate = 0.0
        self.seen_prompts: deque[tuple[str, ...]] = deque(maxlen=64)

    # --- scheduler ---------------------------------------------------------------

    def submit(self, rid: str, prompt: tuple[str, ...], max_new: int | None) -> Job:
        cached = max((_common_prefix(prompt, p) for p in self.seen_prompts), default=0)
        cached = min(cached, len(prompt) - 1)  # the last prompt token is always computed
        self.seen_prompts.append(prompt)
        self.last_hit_rate = cached / len(prompt)
        job = Job(
            rid,
            len(prompt),
            max(cached, 0),
            max_new or NATURAL_LENGTH,
            "length" if max_new else "stop",
        )
        self.rid_to_state[rid] = job
        job.task = asyncio.create_task(self._run(job))
        return job

    async def _run(self, job: Job) -> None:
        self.queued += 1
        admitted = False
        try:
            async with self.slots:
                self.queued, admitted = self.queued - 1, True
                self.running.append(job)
                try:
                    for i in range(job.length):
                        await asyncio.sleep(self.delay_s)
                        job.tokens.append(f"tok{i}")
                        if i < job.length - 1:
                            job.changed.set()
                    # The last token and the finish reason reach the tokenizer together.
                    self._finish(job, job.natural_finish)
                finally:
                    self.running.remove(job)
        except asyncio.CancelledError:
            if not admitted:
                self.queued -= 1
            self._finish(job, "abort")

    def _finish(self, job: Job, reason: str) -> None:
        job.finished = reason
        job.changed.set()
        if self.rid_to_state.get(job.rid) is job:
            del self.rid_to_state[job.rid]
        # TokenizerMetricsCollector.observe_one_finished_request
        self._count("sglang:prompt_tokens_total", job.prompt_tokens)
        self._count("sglang:generation_tokens_total", len(job.tokens))
        self._count("sglang:num_requests_total", 1)
        if job.cached_tokens > 0:
            self._count("sglang:cached_tokens_total", job.cached_tokens)

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        """TokenizerManager.abort_request: a rid it no longer tracks is ignored."""
        jobs = list(self.rid_to_state.values()) if abort_all else [self.rid_to_state.get(rid)]
        for job in jobs:
            if job is None or job.task is None or job.task.cancelling():
                continue
            self._count("sglang:num_aborted_requests_total", 1)
            job.task.cancel()

    def _count(self, name: str, value: float) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + value

    # --- exposition ----------------------------------------------------------------

    def metrics_text(self) -> str:
        used = sum(j.prompt_tokens + len(j.tokens) for j in self.running)
        labels = f'engine_type="unified",model_name="{self.name}",pp_rank="0",tp_rank="0"'
        gauges = {
            "sglang:num_running_reqs": ("The number of running requests.", len(self.running)),
            "sglang:num_queue_reqs": ("The number of requests in the waiting queue.", self.queued),
            "sglang:num_used_tokens": ("The number of used tokens.", used),
            "sglang:token_usage": ("The token usage.", used / self.max_total_tokens),
            "sglang:cache_hit_rate": ("The prefix cache hit rate.", self.last_hit_rate),
            "sglang:max_total_num_tokens": (
                "Maximum total number of tokens in the KV cache pool.",
                self.max_total_tokens,
            ),
        }
        lines = []
        for name, (doc, value) in gauges.items():
            lines += [
                f"# HELP {name} {doc}",
                f"# TYPE {name} gauge",
                f"{name}{{{labels}}} {float(value)}",
            ]
        for name, value in sorted(self.counters.items()):
            family = name.removesuffix("_total")
            lines += [f"# TYPE {family} counter", f'{name}{{model_name="{self.name}"}} {value}']
        return "\n".join(lines) + "\n"


def _common_prefix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _error(message: str, err_type: str = "BadRequestError", status: int = 400) -> Response:
    """SGLang's ErrorResponse (openai/protocol.py), returned flat, not under "error"."""
    return _json(
        {"object": "error", "message": message, "type": err_type, "param": None, "code": status},
        status,
    )


def _invalid(message: str) -> Response:
    # http_server's RequestValidationError handler turns FastAPI's 422 into this 400.
    return _error(message, err_type="Bad Request")


def _prompt_words(body: dict[str, Any], chat: bool) -> tuple[str, ...] | None:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return None
        words: list[str] = []
        for message in messages:
            if not isinstance(message, dict):
                return None
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            words += [f"<|{message.get('role')}|>"] * TEMPLATE_TOKENS_PER_MESSAGE
            words += str(content or "").split()
        return tuple(words)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(map(str, prompt))
    return tuple(prompt.split()) if isinstance(prompt, str) and prompt.split() else None


def _context_error(n_in: int, max_new: int | None, context_len: int) -> str | None:
    """TokenizerManager._validate_one_request's messages, verbatim."""
    if n_in >= context_len:
        return (
            f"The input ({n_in} tokens) is longer than the model's context length "
            f"({context_len} tokens)."
        )
    if max_new is not None and max_new + n_in >= context_len:
        return (
            f"Requested token count exceeds the model's maximum context length of "
            f"{context_len} tokens. You requested a total of {max_new + n_in} tokens: "
            f"{n_in} tokens from the input messages and {max_new} tokens for the "
            f"completion. Please reduce the number of tokens in the input messages or "
            f"the completion to fit within the limit."
        )
    return None


class Chunks:
    """SSE events in the shape of SGLang's ChatCompletionStreamResponse and
    CompletionStreamResponse (pydantic ``model_dump_json``: unset fields are null)."""

    def __init__(self, job: Job, model: str, chat: bool) -> None:
        self.job, self.model, self.chat = job, model, chat
        self.created = int(time.time())

    def _event(self, choices: list[Any], usage: Any = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.job.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def role(self) -> bytes:
        return self._event([self._delta({"role": "assistant", "content": ""})])

    def text(self, piece: str, finish: str | None = None) -> bytes:
        if self.chat:
            return self._event([self._delta({"content": piece})])
        return self._event(
            [
                {
                    "index": 0,
                    "text": piece,
                    "logprobs": None,
                    "finish_reason": finish,
                    "matched_stop": None,
                }
            ]
        )

    def finish(self, reason: str) -> bytes:
        stop = EOS_TOKEN_ID if reason == "stop" else None
        return self._event([self._delta({}, reason, stop)])

    def usage(self) -> bytes:
        # The completions usage chunk is dumped with exclude_none, the chat one is not.
        return self._event([], _usage(self.job, details=self.chat))

    @staticmethod
    def _delta(
        delta: dict[str, Any], finish: str | None = None, stop: int | None = None
    ) -> dict[str, Any]:
        full = {"role": None, "content": None, "reasoning_content": None, "tool_calls": None}
        return {
            "index": 0,
            "delta": {**full, **delta},
            "logprobs": None,
            "finish_reason": finish,
            "matched_stop": stop,
        }


def _usage(job: Job, details: bool = True) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": job.prompt_tokens,
        "total_tokens": job.prompt_tokens + len(job.tokens),
        "completion_tokens": len(job.tokens),
    }
    if details:
        usage["prompt_tokens_details"] = None
    return usage


def create_app(server: FakeSGLang) -> Starlette:
    async def health(request: Request) -> Response:
        generate = os.environ.get("SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION", "1")
        if request.url.path == "/health" and generate.lower() in ("0", "false"):
            return Response(status_code=200)
        await asyncio.sleep(HEALTH_POLL_S)  # the handler checks for output once a second
        return Response(status_code=200)

    async def metrics(request: Request) -> Response:
        if not server.enable_metrics:  # the route exists only with --enable-metrics
            return _json({"detail": "Not Found"}, 404)
        return Response(server.metrics_text(), media_type="text/plain; version=0.0.4")

    async def models(request: Request) -> Response:
        return _json(
            {
                "object": "list",
                "data": [
                    {
                        "id": server.name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "sglang",
                        "root": server.name,
                        "max_model_len": server.context_len,
                    }
                ],
            }
        )

    async def abort(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        server.abort_request(str(body.get("rid") or ""), bool(body.get("abort_all")))
        return Response(status_code=200)

    async def chat(request: Request) -> Response:
        return await _generate(server, request, chat=True)

    async def completions(request: Request) -> Response:
        return await _generate(server, request, chat=False)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/health_generate", health),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/abort_request", abort, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


async def _generate(server: FakeSGLang, request: Request, chat: bool) -> Response:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _invalid("Unsupported Media Type: Only 'application/json' is allowed")
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _invalid("JSON decode error")
    prompt = _prompt_words(body, chat) if isinstance(body, dict) else None
    if prompt is None or "model" not in body:
        return _invalid("Field required: model, and messages (chat) or prompt (completions)")
    max_new = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_new is None and not chat:
        max_new = 16  # CompletionRequest.max_tokens defaults to 16
    if error := _context_error(len(prompt), max_new, server.context_len):
        return _error(error)
    rid = body.get("rid") or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    job = server.submit(str(rid), prompt, max_new)
    chunks = Chunks(job, str(body["model"]), chat)
    if body.get("stream"):
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # create_abort_task: aborts the rid 2 s after the response ends, however it ends.
        return StreamingResponse(
            _stream(server, chunks, usage),
            media_type="text/event-stream",
            background=BackgroundTask(_delayed_abort, server, job.rid),
        )
    return await _complete(server, request, chunks)


async def _delayed_abort(server: FakeSGLang, rid: str) -> None:
    await asyncio.sleep(STREAM_ABORT_DELAY_S)
    server.abort_request(rid)


async def _stream(server: FakeSGLang, chunks: Chunks, usage: bool) -> AsyncIterator[bytes]:
    job, sent = chunks.job, 0
    try:
        if chunks.chat:
            yield chunks.role()
        while True:
            await job.changed.wait()
            job.changed.clear()
            new, sent = job.tokens[sent:], len(job.tokens)
            for i, token in enumerate(new):
                last = job.finished is not None and i == len(new) - 1 and not chunks.chat
                yield chunks.text(
                    token if sent - len(new) + i == 0 else " " + token,
                    job.finished if last else None,
                )
            if job.finished is not None:
                break
        if chunks.chat:
            yield chunks.finish(job.finished)
        if usage:
            yield chunks.usage()
        yield b"data: [DONE]\n\n"
    except BaseException:
        if server.zombie:  # 0.5.18-0.5.19: the cancelled generator drops the state first
            server.rid_to_state.pop(job.rid, None)
        raise


async def _complete(server: FakeSGLang, request: Request, chunks: Chunks) -> Response:
    job, polled_at = chunks.job, 0
    while job.finished is None:
        try:
            await asyncio.wait_for(job.changed.wait(), REQUEST_STATE_WAIT_TIMEOUT_S)
        except TimeoutError:
            if await request.is_disconnected():  # "type 1": queued or in a long prefill
                server.abort_request(job.rid)
                return _error(
                    f"Request is disconnected from the client side (type 1). "
                    f"Abort request obj.rid='{job.rid}'"
                )
            continue
        job.changed.clear()
        if job.finished is None and len(job.tokens) - polled_at >= FORCE_STREAM_INTERVAL:
            polled_at = len(job.tokens)
            if await request.is_disconnected():  # "type 3": running
                server.abort_request(job.rid)
                return _error(
                    f"Request is disconnected from the client side (type 3). "
                    f"Abort request obj.rid='{job.rid}'"
                )
    text = " ".join(job.tokens)
    stop = EOS_TOKEN_ID if job.finished == "stop" else None
    choice: dict[str, Any] = (
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": text,
                "reasoning_content": None,
                "tool_calls": None,
            },
        }
        if chunks.chat
        else {"index": 0, "text": text}
    )
    choice.update(logprobs=None, finish_reason=job.finished, matched_stop=stop)
    return _json(
        {
            "id": job.rid,
            "object": "chat.completion" if chunks.chat else "text_completion",
            "created": chunks.created,
            "model": chunks.model,
            "choices": [choice],
            "usage": _usage(job),
        }
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="A fake SGLang server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", default="default")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--context-length", type=int, default=4096)
    parser.add_argument("--max-total-tokens", type=int, default=20480)
    parser.add_argument("--max-running-requests", type=int, default=64)
    parser.add_argument("--enable-metrics", action="store_true")
    parser.add_argument("--disconnect-mode", choices=["delayed", "zombie"], default="delayed")
    args = parser.parse_args()
    uvicorn.run(
        create_app(FakeSGLang(args)),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
