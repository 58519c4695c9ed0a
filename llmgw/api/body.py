"""Bodies of the routes that parse a request at once (the admin API): read under a size
limit (a body past ``limit`` bytes is refused as soon as it is, declared or streamed,
without being read further), validated into a model, and JSON answers."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from llmgw.errors import InvalidRequest, PayloadTooLarge


async def read_limited(request: Request, limit: int) -> bytes:
    """Raises PayloadTooLarge (413) past ``limit`` bytes, InvalidRequest when the client
    leaves before the end."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidRequest("the client disconnected while sending the body") from None
    return b"".join(chunks)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    """``body`` as ``model``; a 400 naming the first bad field otherwise."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A field name from the client's JSON (lone surrogates are refused as bad JSON).
        param = ".".join(str(p) for p in first["loc"])[:200]
        raise InvalidRequest(f"{param}: {first['msg']}" if param else first["msg"],
                             param=param or None) from None


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")
