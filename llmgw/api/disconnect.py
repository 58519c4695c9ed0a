"""Cancel the work of a request when its client goes away.

Starlette does not notice a disconnect while a handler awaits a non-streaming answer, and
a stream only notices on its next send. Watching ``receive()`` from a side task and
cancelling the request's task turns a disconnect into a prompt upstream close, which makes
the engine abort the request.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive


class DisconnectWatch:
    """``async with DisconnectWatch(receive) as watch:`` cancels the body on disconnect and
    swallows that cancellation; ``watch.disconnected`` tells what happened. Set
    ``watch.done = True`` before the last send, so a disconnect that merely follows the
    finished response is not mistaken for a client leaving early."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[object] | None = None
        self.disconnected = False
        self.done = False

    async def __aenter__(self) -> DisconnectWatch:
        self._owner = asyncio.current_task()
        self._task = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self.done and self._owner is not None:
            self.disconnected = True
            self._owner.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._task is not None and self._owner is not None
        self._task.cancel()
        if self.disconnected and exc_type is asyncio.CancelledError:
            self._owner.uncancel()
            return True
        return False
