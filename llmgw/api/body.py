"""Reading a whole request body under a size limit, for routes that parse it at once
(the admin API): a body past ``limit`` bytes is refused as soon as it is, declared or
streamed, without being read further."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

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
