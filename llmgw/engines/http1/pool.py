"""Keep-alive connections to one engine, and the client that owns every engine's pool.

The engine leg's own HTTP/1.1 client (bench/overhead.py measured aiohttp's per-request
cost as the largest part of the gateway's). Each engine URL gets a pool: a request takes
the most recently used idle connection (the least likely to have been closed by the
engine) or opens one, and gives it back once its response has been read to the end. The
number of connections in use is not bounded, as before: admission is the engines'
business and the gateway's (``admission:``); what is bounded is how many idle ones are
kept (``max_idle``) and for how long (``idle_s``).

**Resending on a stale connection.** An engine may close an idle keep-alive connection
(uvicorn, under vLLM, SGLang and ours, after 5 s) just as the gateway sends a request on
it. The request is sent once more, on a new connection to the same engine, only when all
of these hold:

- the connection was reused (a new one cannot be stale);
- the engine closed it with no byte of a response;
- a new connection to the engine can be made.

The engine may have read the request before closing, but whatever it started on it is
aborted with that connection (engines abort a request whose client left), and the second
attempt goes to the same engine, not another: at worst the engine starts the work twice,
one copy cancelled. If no new connection can be made, the caller gets the first failure
(a disconnect, which llmgw.resilience.retry does not resend elsewhere for a non-streaming
request), never an "unreachable" that would send a request that may have crashed its
engine on to the next replica. A connection the engine closed while idle
is never reused: it is dropped when the loop sees the close.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

from llmgw.engines.http1.connection import Connection, ResponseBroken

# Request heads kept per pool (``OriginPool._head``): more paths than this are made anew.
_MAX_HEADS = 64


class ConnectFailed(Exception):
    """No connection could be made (refused, unresolvable, timed out): the request was
    not sent."""


class Response:
    """A response whose status has arrived. Read the body with ``chunk`` or ``read``;
    ``close`` when done, which keeps the connection for reuse if the body was read to its
    end and drops it otherwise (the engine then sees the client leave)."""

    __slots__ = ("status", "_conn", "_pool")

    def __init__(self, status: int, conn: Connection, pool: OriginPool) -> None:
        self.status = status
        self._conn: Connection | None = conn
        self._pool = pool

    async def chunk(self) -> bytes:
        """The body bytes that arrived since the last call; b"" at its end. Raises
        ResponseBroken when the connection breaks first."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            data = await conn.chunk()
        except ResponseBroken:
            self.close()
            raise
        # A cancelled reader leaves the connection open: its owner closes it, after
        # telling the engine to abort where closing is not enough (SGLang 0.5.18).
        if not data:
            self.close()
        return data

    async def read(self) -> bytes:
        """The whole body (what is left of it), reading the connection directly."""
        conn = self._conn
        if conn is None:
            return b""
        try:
            body = await conn.rest()
        except ResponseBroken:
            self.close()
            raise
        self.close()
        return body

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class OriginPool:
    """The connections to one engine URL (``http`` or ``https``, with an optional path
    prefix). Safe to share across the tasks of one event loop."""

    def __init__(self, url: str, *, connect_timeout_s: float, idle_s: float, max_idle: int) -> None:
        parts = urlsplit(url)
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/").encode()
        self._host_header = parts.netloc.encode("idna")
        self._heads: dict[str, bytes] = {}  # by path: see _head
        self._connect_timeout_s = connect_timeout_s
        self._idle_s, self._max_idle = idle_s, max_idle
        self._idle: list[Connection] = []  # oldest first; taken from the end
        self._open: set[Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(self, path: str, body: bytes, headers: bytes = b"") -> Response:
        """POST ``body`` as JSON to ``path``; ``headers``: more header lines, each ending
        in CRLF. Returns once the status has arrived. Raises ConnectFailed when no
        connection could be made, ResponseBroken when the connection broke before the
        status (after the resend rule of the module docstring)."""
        head = self._heads.get(path) or self._head(path)
        request = b"%s%d\r\n%s\r\n%s" % (head, len(body), headers, body)
        conn = self._take()
        if conn is None:
            return await self._exchange(await self._connect(), request)
        try:
            return await self._exchange(conn, request)
        except ResponseBroken as exc:
            if exc.answered or not exc.lost:
                raise
            try:  # a stale keep-alive connection: once more on a new one (docstring)
                fresh = await self._connect()
            except ConnectFailed:
                raise exc from None
            return await self._exchange(fresh, request)

    def _head(self, path: str) -> bytes:
        """A request's head for ``path`` up to its Content-Length value: the same for
        every request there, so made once per path (the engine paths are a handful)."""
        head = (
            b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: " % (self._prefix, path.encode(), self._host_header)
        )
        if len(self._heads) < _MAX_HEADS:
            self._heads[path] = head
        return head

    async def _exchange(self, conn: Connection, request: bytes) -> Response:
        try:
            conn.begin(request)
            status = await conn.head()
        except BaseException:  # broken, or the caller gave up (deadline, client left)
            conn.close()
            raise
        return Response(status, conn, self)

    def _take(self) -> Connection | None:
        if not self._idle:
            return None
        expired = time.monotonic() - self._idle_s
        while self._idle:
            conn = self._idle.pop()
            if conn.open and conn.idle_since > expired:
                return conn
            conn.close()
        return None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: Connection(self._open.discard), self._host, self._port, ssl=self._tls
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"{exc!r}") from None
        if self._closed:  # the gateway closed while this connected
            conn.close()
            raise ConnectFailed("the client is closed")
        self._open.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """Keep ``conn`` for the next request if its response ended cleanly."""
        if not conn.reusable or self._closed or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._idle_s, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for ``idle_s`` (one timer per pool, not per
        request), so an engine no longer used holds no sockets."""
        self._sweep = None
        now = time.monotonic()
        while self._idle and (
            not self._idle[0].open or now - self._idle[0].idle_since >= self._idle_s
        ):
            self._idle.pop(0).close()
        if self._idle:
            wait = self._idle[0].idle_since + self._idle_s - now
            self._sweep = asyncio.get_running_loop().call_later(wait, self._expire)

    def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for conn in list(self._open):
            conn.close()


class HTTPClient:
    """Every engine's pool, closed together. ``idle_s``: how long an idle connection is
    kept, under uvicorn's 5 s keep-alive so that the engine rarely closes one first."""

    def __init__(self, *, idle_s: float = 4.0, max_idle: int = 256) -> None:
        self._idle_s, self._max_idle = idle_s, max_idle
        self._pools: dict[tuple[str, float], OriginPool] = {}

    def pool(self, url: str, *, connect_timeout_s: float = 5.0) -> OriginPool:
        """The pool for ``url`` (one per URL and connect timeout)."""
        key = (url, connect_timeout_s)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = OriginPool(
                url,
                connect_timeout_s=connect_timeout_s,
                idle_s=self._idle_s,
                max_idle=self._max_idle,
            )
        return pool

    def close(self) -> None:
        """Drop every connection; requests still reading see their connection break."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
