"""``DisconnectWatch`` cancels what a request awaits when its client leaves, and swallows
that cancellation: told by the server through the ``llmgw.disconnect`` extension (the
wire cycle names the request's task), or, without it, by watching ``receive()``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from llmgw.api.disconnect import DisconnectWatch


async def _serve(watch: DisconnectWatch, started: asyncio.Event) -> DisconnectWatch:
    async with watch:
        started.set()
        await asyncio.Event().wait()  # an engine that never answers
    return watch


async def test_without_the_extension_a_disconnect_seen_by_receive_cancels_the_request() -> None:
    left, started = asyncio.Event(), asyncio.Event()

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    task = asyncio.create_task(_serve(DisconnectWatch(receive), started))
    await started.wait()
    left.set()
    watch = await asyncio.wait_for(task, 10)
    assert watch.disconnected
    assert task.cancelling() == 0  # swallowed: the request's task is not left cancelled


async def test_the_extension_names_the_task_to_cancel() -> None:
    callbacks: list[Callable[[asyncio.Task[Any]], None]] = []
    scope = {"extensions": {"llmgw.disconnect": callbacks.append}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("with the extension, receive() is not watched")

    started = asyncio.Event()
    task = asyncio.create_task(_serve(DisconnectWatch(receive, scope), started))
    await started.wait()
    assert len(callbacks) == 1
    callbacks[0](task)  # what the wire cycle does when the connection is lost
    watch = await asyncio.wait_for(task, 10)
    assert watch.disconnected and task.cancelling() == 0


async def test_a_disconnect_after_the_answer_cancels_nothing() -> None:
    callbacks: list[Callable[[asyncio.Task[Any]], None]] = []
    scope = {"extensions": {"llmgw.disconnect": callbacks.append}}

    async def receive() -> dict[str, Any]:
        raise AssertionError("not watched")

    async def answered() -> DisconnectWatch:
        async with DisconnectWatch(receive, scope) as watch:
            watch.done = True  # the last send is under way
            callbacks[0](asyncio.current_task())  # type: ignore[arg-type]
            await asyncio.sleep(0)  # a cancellation would land here
        return watch

    watch = await asyncio.wait_for(asyncio.create_task(answered()), 10)
    assert not watch.disconnected
