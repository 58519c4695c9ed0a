"""HTTP/1.1 framing shared by the benchmarks' raw asyncio servers: the instant engine
(``bench/instant_engine.py``) and the fleet simulator (``bench/fleet_sim/http_server.py``).

Only what OpenAI clients and routers send is understood: Content-Length or chunked
bodies, ``Connection: close``, HTTP/1.0 closing by default. Headers other than those
three are skipped, not stored: neither server reads them, and the instant engine's
CPU per request is what ``bench/overhead.py`` puts under every proxy's numbers.

It imports nothing from ``bench``, so that it loads both as ``http11`` (the scripts run
from ``bench/``) and as ``bench.http11`` (``python -m bench.fleet_sim...``).
"""

from __future__ import annotations

import asyncio

MAX_HEAD = 64 * 1024  # request line + headers
MAX_BODY = 32 * 1024 * 1024
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 413: b"Payload Too Large"}
_TOO_LARGE = (b'{"error":{"message":"request too large","type":"invalid_request_error",'
              b'"param":null,"code":null}}')


class Request:
    """One parsed request; ``method`` stays bytes (compared, never printed)."""

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
    Raises ValueError on a request these servers will not read (too large)."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        if len(buf) > MAX_HEAD:
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
    if length > MAX_BODY:
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


def take_request(buf: bytearray, transport: asyncio.Transport) -> Request | None:
    """Remove the first complete request from ``buf`` and return it; None while it is
    incomplete. A request too large to read is answered 413 and the connection closed
    (None too): the rest of the buffer cannot be framed."""
    try:
        found = parse_request(buf)
    except ValueError:
        transport.write(response_head(413, "application/json", len(_TOO_LARGE)) + _TOO_LARGE)
        transport.close()
        return None
    if found is None:
        return None
    request, used = found
    del buf[:used]
    return request


def response_head(status: int, content_type: str, length: int | None,
                  headers: dict[str, str] | None = None) -> bytes:
    """Status line and headers; chunked when ``length`` is None."""
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")),
             b"content-type: " + content_type.encode("latin-1")]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in (headers or {}).items()]
    lines.append(b"transfer-encoding: chunked" if length is None
                 else b"content-length: %d" % length)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def http_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
