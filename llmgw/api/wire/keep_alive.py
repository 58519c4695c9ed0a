"""The keep-alive timeout of a server's idle connections, kept by one timer for all.

uvicorn arms a timer per connection each time an answer completes and cancels it when
the next request arrives: a ``call_later`` and a ``cancel`` per request (about 2 us with
uvloop, a fiftieth of what a short request costs the gateway). Here an idle connection
is only noted with its deadline, in the order they went idle, and one timer, set for the
oldest deadline, closes whichever connections are still idle when it fires. A connection
closes exactly as late as uvicorn would close it: ``timeout_s`` after its last answer.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Idle(Protocol):
    """A connection: uvicorn's protocol (its handler closes the transport)."""

    def timeout_keep_alive_handler(self) -> None: ...


class IdleConnections:
    """The idle connections of one server (one event loop), by deadline."""

    __slots__ = ("deadlines", "_timer")

    def __init__(self) -> None:
        # Oldest first: a connection is re-inserted each time it goes idle, and every
        # connection of a server has the same timeout.
        self.deadlines: dict[Idle, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def idle(self, connection: Idle, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        """``connection`` answered and waits for its next request."""
        deadlines = self.deadlines
        deadlines.pop(connection, None)
        deadline = deadlines[connection] = loop.time() + timeout_s
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)

    # ``deadlines.pop(connection, None)``: a request arrived, or the connection is gone.

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        expired = []
        for connection, deadline in self.deadlines.items():
            if deadline > now:
                self._timer = loop.call_at(deadline, self._expire, loop)
                break
            expired.append(connection)
        for connection in expired:
            del self.deadlines[connection]
            connection.timeout_keep_alive_handler()
