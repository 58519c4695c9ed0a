"""The embedded engine's HTTP face: vLLM's OpenAI routes on Starlette.

Routes: `GET /health`, `GET /v1/models`, `GET /metrics`, `POST /v1/chat/completions`
and `POST /v1/completions` (streaming or not), `POST /v1/embeddings` (mean-pooled last
hidden states, see `pooling`), vLLM's `POST /tokenize` and `POST /detokenize`,
`POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter`. Bodies are relayed
byte for byte by the gateway, so their shapes follow vLLM's server. A non-streaming
answer is the concatenation of the same events a stream would carry, so both always
agree.

A request whose `model` names a loaded LoRA adapter runs with it and answers under
that name, as in vLLM; /v1/models lists each adapter with `root` = its path and
`parent` = the base model.

Client-controlled work stays off the event loop and bounded: bodies above
`--max-body-bytes` are refused (413) while they arrive, and prompts are rendered and
tokenized in `PromptWorker` threads (see `prompts`), so /health always answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmgw.engines.embedded.adapters import (
    AdapterManager,
    LoadedAdapter,
    LoRAOptions,
    LoRAStats,
)
from llmgw.engines.embedded.disconnect import ClientDisconnected, cancel_on_disconnect
from llmgw.engines.embedded.generator import RequestHandle
from llmgw.engines.embedded.loader import LoadedModel
from llmgw.engines.embedded.lora_layers import BASE_SLOT
from llmgw.engines.embedded.metrics import engine_registry
from llmgw.engines.embedded.pooling import Pooling
from llmgw.engines.embedded.prompts import PromptBuilder, PromptWorker
from llmgw.engines.embedded.protocol import (
    load_adapter_request,
    parse_body,
    requested_model,
    unload_adapter_name,
)
from llmgw.engines.embedded.responses import DONE, Kind, ResponseBuilder, sse
from llmgw.engines.embedding_wire import embeddings_answer
from llmgw.errors import GatewayError, PayloadTooLarge

log = logging.getLogger(__name__)

# 4x the gateway's default `max_body_bytes`; orjson parses 32 MiB of its worst shape
# (many short strings) in ~0.2 s on one slow core, the most the event loop may stall.
DEFAULT_MAX_BODY_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """The operator's flags about client-controlled work (same names, vLLM's first)."""

    trust_request_chat_template: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _error(exc: GatewayError) -> Response:
    return _json(exc.body(), exc.status_code)


def _internal_error() -> GatewayError:
    return GatewayError("internal error in the embedded engine")


class EventStreamResponse(StreamingResponse):
    """SSE that stops as soon as the client leaves, not at the next send.

    `on_close` runs however the stream ends (done, client gone, error); it must be
    idempotent.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        on_close: Callable[[], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(chunks, headers=headers, media_type="text/event-stream")
        self._chunks = chunks
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def pump() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self._chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        try:
            await cancel_on_disconnect(receive, pump())
        except ClientDisconnected:
            log.debug("client left mid-stream")
        finally:
            self._on_close()


class EngineServer:
    """Owns the loaded model, its generator thread (started by the app lifespan),
    its LoRA adapters and its own metrics registry; one per process.

    `lora` must be given exactly when the model was loaded with LoRA enabled; its
    `modules` are loaded during startup, and one that fails stops the start.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        served_name: str,
        lora: LoRAOptions | None = None,
        options: RequestOptions | None = None,
    ) -> None:
        self._loaded = loaded
        self._generator = loaded.generator
        self._name = served_name
        self._loaded_at = int(time.time())
        self._lora = lora
        self._options = options or RequestOptions()
        self._prompts = PromptBuilder(
            loaded.tokenizer,
            max_model_len=loaded.max_model_len,
            vocab_size=loaded.vocab_size,
            trust_request_chat_template=self._options.trust_request_chat_template,
        )
        self._pooling = Pooling(self._prompts, loaded.tokenizer,
                                max_model_len=loaded.max_model_len,
                                vocab_size=loaded.vocab_size,
                                hidden_size=self._generator.hidden_size)
        self._worker = PromptWorker()
        max_loras = lora.max_loras if lora is not None else 0
        self.adapters = AdapterManager(self._generator, loaded.adapters, served_name, max_loras)
        lora_stats = self._lora_stats if lora is not None else None
        self.registry = engine_registry(
            self._generator.stats, served_name, lora_stats, lambda: self._worker.preparing
        )

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            self._generator.start()
            try:
                await self._load_static_adapters()
                yield
            finally:
                self._worker.close()
                self._generator.close()

        routes = [
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/detokenize", self.detokenize, methods=["POST"]),
            Route("/v1/load_lora_adapter", self.load_lora_adapter, methods=["POST"]),
            Route("/v1/unload_lora_adapter", self.unload_lora_adapter, methods=["POST"]),
        ]
        handlers = {Exception: self._unexpected}
        return Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)

    async def health(self, _: Request) -> Response:
        # A dead scheduler thread would hang every request: report it, like vLLM does.
        return Response(status_code=200 if self._generator.alive() else 503)

    async def models(self, _: Request) -> Response:
        loaded = self._loaded
        base = _card(self._name, self._loaded_at, loaded.root, None, loaded.max_model_len)
        adapters = [_card(a.name, a.created, a.path, self._name) for a in self.adapters.loaded()]
        return _json({"object": "list", "data": [base, *adapters]})

    async def load_lora_adapter(self, request: Request) -> Response:
        try:
            body = load_adapter_request(parse_body(await self._body(request)))
            message = await self.adapters.load(body.lora_name, body.lora_path, body.load_inplace)
        except GatewayError as exc:
            return _error(exc)
        return Response(message, media_type="text/plain")

    async def unload_lora_adapter(self, request: Request) -> Response:
        try:
            name = unload_adapter_name(parse_body(await self._body(request)))
            message = await self.adapters.unload(name)
        except GatewayError as exc:
            return _error(exc)
        return Response(message, media_type="text/plain")

    async def metrics(self, _: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def embeddings(self, request: Request) -> Response:
        try:
            body = parse_body(await self._body(request))
            adapter = self.adapters.resolve(requested_model(body))
            job = await self._worker.call(self._pooling.embedding_job, body)
            vectors = await asyncio.wrap_future(self._generator.embed(job.prompts,
                                                                      _slot(adapter)))
        except GatewayError as exc:
            return _error(exc)
        name = adapter.name if adapter else self._name
        return _json(embeddings_answer(vectors, name, job.prompt_tokens, job.encoding_format))

    async def tokenize(self, request: Request) -> Response:
        return await self._tokenizer_call(request, self._pooling.tokenize)

    async def detokenize(self, request: Request) -> Response:
        return await self._tokenizer_call(request, self._pooling.detokenize)

    async def _tokenizer_call(
        self, request: Request, work: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> Response:
        try:
            body = parse_body(await self._body(request))
            self.adapters.resolve(requested_model(body))  # an unknown model is 404
            return _json(await self._worker.call(work, body))
        except GatewayError as exc:
            return _error(exc)

    async def _generate(self, request: Request, kind: Kind) -> Response:
        try:
            body = parse_body(await self._body(request))
            self.adapters.resolve(requested_model(body))  # an unknown model is 404 first
            job = await self._worker.run(self._prompts, body, kind)
            adapter = self.adapters.resolve(requested_model(body))  # may be unloaded now
        except GatewayError as exc:
            return _error(exc)
        request_id = request.headers.get("x-request-id")
        builder = ResponseBuilder(kind, adapter.name if adapter else self._name, request_id)
        headers = {"x-request-id": request_id} if request_id else None
        # No await since `resolve`: an unload cannot slip in between (see AdapterManager).
        handle = self._generator.submit(job.prompt_ids, job.params, _slot(adapter))
        if job.stream:
            chunks = self._stream(handle, builder, job.include_usage)
            return EventStreamResponse(chunks, handle.abort, headers)
        try:
            result = await cancel_on_disconnect(request.receive, self._collect(handle, builder))
        except ClientDisconnected:
            return Response(status_code=499)  # nobody reads it; uvicorn drops it
        except GatewayError as exc:
            return _error(exc)
        finally:
            handle.abort()  # frees the batch slot unless the request already finished
        return Response(orjson.dumps(result), media_type="application/json", headers=headers)

    async def _body(self, request: Request) -> bytes:
        """The whole body, refused (413) as soon as it is known to exceed the limit."""
        limit = self._options.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _stream(
        self, handle: RequestHandle, builder: ResponseBuilder, include_usage: bool
    ) -> AsyncIterator[bytes]:
        role = builder.role_chunk()
        if role is not None:
            yield sse(role)
        completion_tokens = 0
        async for event in handle:
            completion_tokens = event.completion_tokens
            if event.finish_reason == "error":
                # Headers are gone already: report in-band, then end the stream.
                yield sse(_internal_error().body())
                yield DONE
                return
            yield sse(builder.chunk(event.text, event.finish_reason, event.stop_reason))
        if include_usage:
            yield sse(builder.usage_chunk(handle.prompt_tokens, completion_tokens))
        yield DONE

    async def _collect(self, handle: RequestHandle, builder: ResponseBuilder) -> dict[str, Any]:
        parts: list[str] = []
        async for event in handle:
            parts.append(event.text)
            if event.finish_reason == "error":
                raise _internal_error()
            if event.finish_reason is not None:
                return builder.final(
                    "".join(parts),
                    event.finish_reason,
                    event.stop_reason,
                    handle.prompt_tokens,
                    event.completion_tokens,
                )
        raise _internal_error()  # unreachable: the generator always sends a final event

    async def _unexpected(self, request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(_internal_error())

    async def _load_static_adapters(self) -> None:
        """`--lora-modules`, like vLLM's static LoRAs: any failure aborts the start."""
        for name, path in self._lora.modules if self._lora is not None else ():
            try:
                await self.adapters.load(name, path)
            except GatewayError as exc:
                raise RuntimeError(f"--lora-modules {name}={path}: {exc.message}") from None

    def _lora_stats(self) -> LoRAStats:
        stats = self._generator.stats()
        return self.adapters.stats(stats.running_adapters, stats.waiting_adapters)


def _slot(adapter: LoadedAdapter | None) -> int:
    return adapter.slot if adapter is not None else BASE_SLOT


def _card(
    name: str, created: int, root: str, parent: str | None, max_model_len: int | None = None
) -> dict[str, Any]:
    """One /v1/models entry; an adapter's has `parent` set and no `max_model_len`."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "llmgw",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
    }
