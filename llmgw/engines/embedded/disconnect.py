"""Notice a client leaving while its request is still being generated.

A non-streaming handler awaits the whole answer and a stream only notices on its
next send; both would keep a batch slot busy for nothing. Racing the work against
ASGI `receive()` turns an `http.disconnect` into an immediate cancellation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the work finished."""


async def _wait_for_disconnect(receive: Receive) -> None:
    # The body was read already, so the next message can only be the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`; cancel it and raise `ClientDisconnected` if the client leaves first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        task.cancel()  # no-op when it finished
    if task in done:
        return task.result()
    raise ClientDisconnected
