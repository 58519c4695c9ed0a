"""The model routes (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses,
/tokenize, /detokenize: ``llmgw.protocol.ENDPOINTS``) as one raw ASGI app per endpoint.

The hot path skips Starlette's request/response wrappers: one function reads the body,
validates it once, opens the engine request and relays the answer, with one disconnect
watch spanning all of it, so a client that leaves at any point aborts the engine request.
Whatever happens, the request ends in ``_close``, which records the status the client got.

With ``auth:``, the key is checked before the body is read, and the request admitted by
its key's and model's limits (llmgw.tenancy) before it is dispatched; ``_close`` settles
the tokens it used.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from llmgw.admission import FairQueue
from llmgw.api.disconnect import DisconnectWatch
from llmgw.api.errors import error_response, internal_error
from llmgw.api.request_checks import check_request
from llmgw.api.request_headers import RequestHeaders
from llmgw.api.request_ids import new_request_id
from llmgw.api.request_record import first_token_ns, request_record
from llmgw.api.sse import relay_json, relay_stream
from llmgw.api.tool_loop import HeldSlot, ToolLoop
from llmgw.context import CallContext, depth_of
from llmgw.dispatcher import Dispatcher
from llmgw.errors import (
    ClientGone,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    UpstreamTimeout,
)
from llmgw.exchange import Exchange
from llmgw.lora.catalog import Adapter
from llmgw.model_group import ModelGroup
from llmgw.protocol import ENDPOINTS, Endpoint, ModelRequest, prompt_text
from llmgw.routing.session import session_key
from llmgw.telemetry import NO_SPAN, AccessLog, Span
from llmgw.tenancy.estimate import estimate_tokens, used_tokens
from llmgw.tenancy.gate import Admission, Tenancy
from llmgw.tenancy.keys import ApiKey
from llmgw.tools.loop import hosted_tools, offered
from llmgw.tools.toolset import ToolSet
from llmgw.types import Outcome, RequestContext

log = logging.getLogger("llmgw.api")


def taken_body(scope: Scope, limit: int) -> bytes | None:
    """The whole body, when llmgw's wire cycle has it all already (``llmgw.request_body``):
    no ASGI message, no coroutine. None otherwise: ``read_body`` then."""
    whole = _offered(scope, "llmgw.request_body")
    body: bytes | None = whole() if whole is not None else None
    if body is not None and len(body) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return body


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``limit`` bytes.
    Raises ClientGone when the client leaves before sending all of it."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone("the client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("request body must be a JSON object")
    return parsed


def validate(parsed: dict[str, Any], endpoint: Endpoint) -> ModelRequest:
    try:
        # The model's validator itself: ``model_validate`` hands it six keyword arguments
        # (each None), which cost a third of what validating a short request does.
        request: ModelRequest = \
            ENDPOINTS[endpoint].request.__pydantic_validator__.validate_python(parsed)
        return request
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"] if not _union_branch(p)) or None
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"],
                             param=param) from None


# How pydantic names the member of a union that failed (``input.str``, ``input.list[int]``):
# not part of the field's path, so not part of ``param``.
_BRANCH_NAMES = frozenset({"str", "int", "float", "bool", "none"})


def _union_branch(part: str | int) -> bool:
    return isinstance(part, str) and (part in _BRANCH_NAMES or "[" in part)


def parse_request(body: bytes, endpoint: Endpoint) -> tuple[dict[str, Any], ModelRequest]:
    parsed = parse_json(body)
    return parsed, validate(parsed, endpoint)


# Opt-in: a request carrying this header gets x-llmgw-route with the routing decision.
EXPLAIN_HEADER = "x-llmgw-explain"


# Ray Serve's header naming the multiplexed model (here: the LoRA adapter) of a request.
MULTIPLEX_HEADER = "serve_multiplexed_model_id"


async def request_context(request_id: str, group: ModelGroup, endpoint: Endpoint,
                          stream: bool, headers: Headers, parsed: dict[str, Any],
                          adapter: Adapter | None = None,
                          admission: Admission | None = None) -> RequestContext:
    """What routing may know; the prompt text, its tokens and the session key only when
    the model's policies use them (rendering or tokenizing a long history costs).
    ``request_id`` keys routing's per-request state: the gateway's own, unique id."""
    needs = group.needs
    tokens = None
    if "tokens" in needs and group.tokenizer is not None and (
            endpoint == "chat" or endpoint == "completions"):  # a prompt to tokenize
        tokens = await group.tokenizer.tokens(endpoint, parsed)
    return RequestContext(
        request_id=request_id, model=group.name, endpoint=endpoint, stream=stream,
        headers=headers, adapter=adapter.name if adapter is not None else None,
        prompt=prompt_text(parsed) if "prompt" in needs else "",
        prompt_tokens=tokens,
        session_id=session_key(headers, parsed) if "session" in needs else None,
        tenant=admission.key.name if admission is not None else None,
        priority=admission.priority if admission is not None else "interactive",
    )


def resolve_for(dispatcher: Dispatcher, key: ApiKey | None, asked: str, headers: Headers,
                parsed: dict[str, Any]) -> tuple[ModelGroup, Adapter | None]:
    """The group and adapter a request names, as far as its key may see: a name outside
    the key's allowlist is a 404 exactly like one that does not exist. An alias the key
    may use grants its target models; adapters must be allowed by name."""
    alias = asked in dispatcher.splits
    if alias and not Tenancy.visible(key, asked):
        raise _hidden(asked)
    try:
        model = dispatcher.target(asked, headers, parsed)
        group, adapter = dispatcher.resolve(model, headers.get(MULTIPLEX_HEADER))
    except ModelNotFound:
        if key is None or key.models is None:
            raise
        # "The adapter 'x' of model 'm' ..." would tell a restricted key that m exists.
        raise _hidden(asked) from None
    served = adapter.name if adapter is not None else None if alias else group.name
    if served is not None and not Tenancy.visible(key, served):
        raise _hidden(asked)
    return group, adapter


def _hidden(asked: str) -> ModelNotFound:
    """What a key gets for a name outside its allowlist: the answer to a name that does
    not exist (built only when refused, not on every request)."""
    return ModelNotFound(f"The model '{asked}' does not exist.", param="model")


def model_label(dispatcher: Dispatcher, parsed: dict[str, Any]) -> str:
    """The model a refused request named, for its metrics: trusted only when it names a
    configured model or adapter, so labels stay bounded; "" (counted as unknown) else."""
    model = parsed.get("model")
    if not isinstance(model, str):
        return ""
    try:
        return dispatcher.resolve(model)[0].name
    except GatewayError:
        return ""


class _Call:
    """One request's bookkeeping, read by ``_close`` however the request ends."""

    __slots__ = ("headers", "started", "gateway_id", "request_id", "reply_headers", "parsed",
                 "model", "exchange", "outcome", "status", "error", "key", "admission",
                 "slot", "span")

    def __init__(self, headers: Headers) -> None:
        self.headers = headers
        self.started = time.perf_counter()
        # Unique per request: keys routing's per-request state and the engine request (to
        # abort it). Never the client's x-request-id, which may repeat; that one is only
        # echoed and logged.
        self.gateway_id = new_request_id()
        self.request_id = headers.get("x-request-id") or self.gateway_id
        # Headers are latin-1 on the wire: echo the client's exact bytes.
        self.reply_headers = [(b"x-request-id", self.request_id.encode("latin-1"))]
        self.parsed: dict[str, Any] | None = None
        self.model = ""
        self.exchange: Exchange | None = None
        # Until the route says otherwise the client left: a disconnect cancels the route
        # and the watch swallows that, so nothing else gets to set these.
        self.outcome: Outcome = "cancelled"
        self.status = 499
        self.error: GatewayError | None = None
        self.key: ApiKey | None = None  # with auth: the caller's key, once known
        self.admission: Admission | None = None
        # The model's admission queue while the request holds one of its slots.
        self.slot: FairQueue | None = None
        self.span: Span | None = None  # with tracing: the request's root span


class GenerationRoute:
    """An ASGI app for one model endpoint (generation, embeddings, tokenizer); reads its
    collaborators from app.state."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dispatcher: Dispatcher = scope["app"].state.dispatcher
        call = _Call(RequestHeaders(scope=scope))
        if not dispatcher.tracing.enabled:
            await self._handle(dispatcher, call, scope, receive, send)
            return
        # The root span around everything when tracing is on.
        with dispatcher.tracing.request("llmgw.request", call.headers) as span:
            call.span = span
            await self._handle(dispatcher, call, scope, receive, send)

    async def _handle(self, dispatcher: Dispatcher, call: _Call, scope: Scope,
                      receive: Receive, send: Send) -> None:
        try:
            await self._serve(call, scope, receive, send)
        except GatewayError as exc:
            await self._fail(call, exc, dispatcher, (scope, receive, send))
        except Exception:
            # A gateway bug, not the client's doing: one traceback, a generic 500.
            log.exception("unhandled error (request_id=%s)", call.request_id)
            await self._fail(call, internal_error(call.request_id), dispatcher,
                             (scope, receive, send))
        finally:
            try:
                await self._close(dispatcher, call)
            finally:  # slots are freed whatever happened above
                if call.slot is not None:
                    call.slot.release(call.key.name if call.key else "")
                if call.key is not None:
                    _settle(scope["app"].state.tenancy, call, call.key)
                self._report(dispatcher, scope["app"].state.access_log, call)

    async def _serve(self, call: _Call, scope: Scope, receive: Receive, send: Send) -> None:
        state, headers = scope["app"].state, call.headers
        dispatcher: Dispatcher = state.dispatcher
        tenancy: Tenancy = state.tenancy
        with dispatcher.tracing.span("llmgw.parse") if dispatcher.tracing.enabled else NO_SPAN:
            call.key = tenancy.authenticate(headers)  # before reading a stranger's body
            body = taken_body(scope, state.max_body_bytes)
            if body is None:
                body = await read_body(receive, headers, state.max_body_bytes)
            call.parsed = parse_json(body)
            req = validate(call.parsed, self.endpoint)
            check_request(req, state.request_bounds)
            group, adapter = resolve_for(dispatcher, call.key, req.model, headers,
                                         call.parsed)
        call.model, stream = group.name, req.streamed
        dispatcher.check_served(group, self.endpoint)
        if call.key is not None:
            _admit(tenancy, call, call.key, group.name, ENDPOINTS[self.endpoint].counts_tokens)
        if adapter is not None and group.lora is not None:
            group.lora.note_request(adapter)
        ctx = await request_context(call.gateway_id, group, self.endpoint, stream, headers,
                                    call.parsed, adapter, call.admission)
        loop = tool_loop(state, call, group, ctx, adapter) if self.endpoint == "chat" else None
        upstream = dispatcher.upstream_body(group, body, call.parsed, stream, req.wants_usage,
                                            call.gateway_id, adapter, self.endpoint)
        async with DisconnectWatch(receive, scope) as watch:
            if loop is not None:
                await _serve_loop(loop, call, send, watch, stream, tenancy)
                return
            if group.admission is not None:  # a saturated model: wait for a slot
                await group.admission.acquire(ctx.tenant or "", ctx.priority,
                                              call.key.weight if call.key else 1.0)
                call.slot = group.admission
                if call.key is not None:  # it may have been revoked while this waited
                    tenancy.check_current(call.key)
            call.exchange = exchange = await dispatcher.open(
                ctx, group, upstream, call.gateway_id, explain=EXPLAIN_HEADER in headers,
                adapter=adapter)
            call.reply_headers += _route_headers(exchange)
            if stream:
                call.outcome = await relay_stream(exchange, send, req.wants_usage,
                                                  call.reply_headers, watch, call.request_id)
                call.status = 200
            else:
                call.status = await relay_json(exchange, send, call.reply_headers, watch,
                                               _offered(scope, "llmgw.json_answer"))
                call.outcome = "ok"

    async def _fail(self, call: _Call, error: GatewayError, dispatcher: Dispatcher,
                    asgi: tuple[Scope, Receive, Send]) -> None:
        """Answer an error raised before the response started."""
        call.error, call.status = error, error.status_code
        call.outcome = ("cancelled" if isinstance(error, ClientGone) else
                        "timeout" if isinstance(error, UpstreamTimeout) else "upstream_error")
        if not call.model and call.parsed is not None:
            call.model = model_label(dispatcher, call.parsed)
        if not isinstance(error, ClientGone):  # nobody is left to answer
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in call.reply_headers}
            await error_response(error, headers)(*asgi)

    async def _close(self, dispatcher: Dispatcher, call: _Call) -> None:
        exchange = call.exchange
        if exchange is None:  # no engine answered: bad input, no replica, the client left
            dispatcher.record_failure(call.model, self.endpoint, call.error, call.status,
                                      call.started)
            return
        if call.error is not None:
            exchange.record_error(call.error)
        if call.outcome in ("cancelled", "timeout"):
            await exchange.abort()
        exchange.finish(call.outcome, call.status)

    def _report(self, dispatcher: Dispatcher, access_log: AccessLog | None,
                call: _Call) -> None:
        """The request's access log line and its root span's outcome, when either is on."""
        span = call.span if call.span is not None and call.span.is_recording() else None
        if access_log is None and span is None:
            return
        record = request_record(
            request_id=call.request_id, gateway_id=call.gateway_id, endpoint=self.endpoint,
            model=call.model, status=call.status, outcome=call.outcome, error=call.error,
            tenant=call.key.name if call.key is not None else None, started=call.started,
            exchange=call.exchange)
        if access_log is not None:
            access_log.write(record)
        if span is not None:
            dispatcher.tracing.end_request(span, record, first_token_ns(call.exchange))

def tool_loop(state: Any, call: _Call, group: ModelGroup, ctx: RequestContext,
              adapter: Adapter | None) -> ToolLoop | None:
    """The request's tool loop when it names the gateway's tools (llmgw/tools/loop.py)."""
    assert call.parsed is not None
    hosted = hosted_tools(call.parsed)
    if hosted is None:
        return None
    tools: ToolSet = state.tools
    key = call.key
    specs = offered(hosted, tools.specs.values(),
                    lambda name: key is None or key.allows_tool(name))
    loop = ToolLoop(state.dispatcher, group, ctx, adapter, tools, specs, call.parsed,
                    hosted.max_rounds, call.gateway_id,
                    CallContext(None, depth_of(call.headers), call.headers.get("authorization")))
    if group.admission is not None:
        loop.slot = HeldSlot(group.admission, ctx.tenant or "", ctx.priority,
                             key.weight if key else 1.0)
    return loop


async def _serve_loop(loop: ToolLoop, call: _Call, send: Send, watch: DisconnectWatch,
                      stream: bool, tenancy: Tenancy) -> None:
    """The loop holds its own admission slot (let go while its tools run)."""
    try:
        if loop.slot is not None:
            await loop.slot.acquire()
            if call.key is not None:  # it may have been revoked while this waited
                tenancy.check_current(call.key)
        if stream:
            call.outcome = await loop.answer_stream(send, call.reply_headers, watch,
                                                    call.request_id)
            call.status = 200
        else:
            call.status = await loop.answer_json(send, call.reply_headers, watch)
            call.outcome = "ok"
    finally:  # the round in flight, finished or aborted by _close like any exchange
        call.exchange = loop.exchange
        if loop.slot is not None:
            loop.slot.release()


def _admit(tenancy: Tenancy, call: _Call, key: ApiKey, model: str, tokens: bool) -> None:
    """Charge the key's and model's limits (RateLimited when over one); the response
    carries OpenAI's x-ratelimit-* headers. ``tokens``: whether the request's tokens
    count against tokens per minute (not a tokenizer route's)."""
    assert call.parsed is not None
    estimate = estimate_tokens(call.parsed) if tokens else 0
    call.admission = admission = tenancy.admit(key, model, estimate)
    if admission is not None:
        call.reply_headers += [(k.encode(), v.encode())
                               for k, v in admission.headers().items()]


def _settle(tenancy: Tenancy, call: _Call, key: ApiKey) -> None:
    """A keyed request ended: free its admission with the tokens it really used (none
    when no engine ran it), and count it under its key's name."""
    usage = call.exchange.usage if call.exchange is not None else None
    prompt, completion = used_tokens(usage)
    if call.admission is not None:
        used = None if prompt is None and completion is None else \
            (prompt or 0) + (completion or 0)
        call.admission.finish(0 if call.exchange is None else used)
    tenancy.record(key, call.model or "unknown", call.status, prompt, completion)


def _offered(scope: Scope, extension: str) -> Any:
    """A scope extension the server offers (llmgw's wire cycle), or None."""
    extensions = scope.get("extensions")
    return extensions.get(extension) if extensions else None


def _route_headers(exchange: Exchange) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-llmgw-replica", exchange.replica.id.encode())]
    if exchange.decision is not None:
        headers.append((b"x-llmgw-route", orjson.dumps(
            {"replica": exchange.replica.id, **exchange.decision.as_dict()})))
    return headers
