"""The one place where errors become HTTP: OpenAI-shaped JSON with the right status."""

from __future__ import annotations

import logging
import uuid

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from llmgw.errors import GatewayError, InvalidRequest

log = logging.getLogger("llmgw.api")


def internal_error(request_id: str) -> GatewayError:
    """What a client sees of a gateway bug: the id to report, never the exception."""
    return GatewayError(f"internal error (request_id={request_id})")


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    headers = {**(headers or {}), **error.headers()}
    return Response(
        orjson.dumps(error.body()), status_code=error.status_code,
        media_type="application/json", headers=headers,
    )


def error_event(error: GatewayError) -> bytes:
    """An error after the stream started: the status is already sent, so it goes in-band."""
    return b"data: " + orjson.dumps(error.body()) + b"\n\n"


def install_error_handlers(app: FastAPI) -> None:
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(InvalidRequest(str(first["msg"]), param=param))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = GatewayError(str(exc.detail))
        body = error.body()
        body["error"]["type"] = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return Response(orjson.dumps(body), status_code=exc.status_code,
                        media_type="application/json")

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        # Starlette re-raises after this handler and the server logs the traceback: one
        # traceback per error, this line ties it to the id the client got.
        log.error("unhandled error (request_id=%s): %s", request_id, type(exc).__name__)
        return error_response(internal_error(request_id))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
