"""Cancel the work of a request when its client goes away.

Starlette does not notice a disconnect while a handler awaits a non-streaming answer, and
a stream only notices on its next send. Cancelling the request's task when the client
leaves turns a disconnect into a prompt upstream close, which makes the engine abort the
request. The server tells of the disconnect through the ``llmgw.disconnect`` scope
extension where it offers one (llmgw's own cycle, llmgw.api.wire: a call, no task);
elsewhere a side task watches ``receive()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from starlette.types import Receive, Scope

# Called with the task serving the request (which the watch cancels).
ClientLeft = Callable[["asyncio.Task[object]"], None]
# The extension's value: called with a callback to call once if the client leaves.
Subscribe = Callable[[ClientLeft], None]


class DisconnectWatch:
    """``async with DisconnectWatch(receive, scope) as watch:`` cancels the body on
    disconnect and swallows that cancellation; ``watch.disconnected`` tells what happened.
    Set ``watch.done = True`` before the last send, so a disconnect that merely follows
    the finished response is not mistaken for a client leaving early."""

    def __init__(self, receive: Receive, scope: Scope | None = None) -> None:
        self._receive = receive
        extensions = scope.get("extensions") if scope is not None else None
        self._subscribe: Subscribe | None = (extensions or {}).get("llmgw.disconnect")
        self._task: asyncio.Task[None] | None = None
        self._owner: asyncio.Task[object] | None = None
        self._exited = False
        self.disconnected = False
        self.done = False

    async def __aenter__(self) -> DisconnectWatch:
        if self._subscribe is not None:  # the server names the task when the client leaves
            self._subscribe(self._client_left)
        else:
            self._task = asyncio.create_task(self._watch(asyncio.current_task()))
        return self

    async def _watch(self, owner: asyncio.Task[object] | None) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if owner is not None:
            self._client_left(owner)

    def _client_left(self, owner: asyncio.Task[object]) -> None:
        if not self.done and not self._exited:
            self.disconnected = True
            self._owner = owner  # to uncancel once the cancellation is swallowed
            owner.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        owner, self._owner = self._owner, None  # no cycle through the request's task
        self._exited = True  # a disconnect from now on cancels nothing
        if self._task is not None:
            self._task.cancel()
        if owner is not None and exc_type is asyncio.CancelledError:
            owner.uncancel()
            return True
        return False
