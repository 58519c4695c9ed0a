"""Dynamic batching with Ray Serve's ``@serve.batch`` semantics.

A batched method takes a list and returns a list of the same length. Each caller passes
one item and awaits its own element. Per instance, one ``BatchQueue`` collects calls: it
waits for a first item, then for more until ``max_batch_size`` items are there or
``batch_wait_timeout_s`` passed since that first one, and runs them as one call of the
method. Batches run one at a time per instance (Ray's ``max_concurrent_batches=1``);
calls that arrive meanwhile form the next batch. An exception, or a result list of the
wrong length, fails every call of that batch with the same error.

Both bounds change at run time (``set_max_batch_size``, ``set_batch_wait_timeout_s``),
taking effect from the next batch. One event loop per instance; not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class BatchSizeMismatch(Exception):
    """The batched method returned a list of another length than it was given."""


@dataclass(slots=True)
class _Call:
    item: Any
    future: asyncio.Future[tuple[Any, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class BatchQueue:
    """One instance's queue for one batched method. ``run(items)`` calls the method."""

    def __init__(self, run: Callable[[list[Any]], Any], name: str, max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        self._run, self.name = run, name
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        # Calls not yet in a batch, and a flag set when one arrives (no asyncio.Queue:
        # 3.11's wait_for around Queue.get can drop an item that arrives as it times out).
        self._waiting: deque[_Call] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: Any) -> tuple[Any, int]:
        """The item's result and the size of the batch it ran in."""
        if self._task is None or self._task.done():
            # An empty context: a batch serves many callers, none of whose llmgw.context
            # (key, depth) may leak into the others' batches.
            self._task = asyncio.create_task(self._loop(), name=f"batch-{self.name}",
                                             context=contextvars.Context())
        call = _Call(item)
        self._waiting.append(call)
        self._arrived.set()
        return await call.future

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._execute(batch)

    async def _collect(self) -> list[_Call]:
        loop = asyncio.get_running_loop()
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = loop.time() + self.batch_wait_timeout_s
        while len(self._waiting) < self.max_batch_size and loop.time() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
        batch = [self._waiting.popleft()
                 for _ in range(min(self.max_batch_size, len(self._waiting)))]
        # A caller that left (cancelled) before its batch ran does not take a slot.
        return [call for call in batch if not call.future.done()]

    async def _execute(self, batch: list[_Call]) -> None:
        items = [call.item for call in batch]
        try:
            results = self._run(items)
            if inspect.isawaitable(results):
                results = await results
            if not isinstance(results, list | tuple) or len(results) != len(items):
                got = len(results) if isinstance(results, list | tuple) else \
                    type(results).__name__
                raise BatchSizeMismatch(
                    f"batched method {self.name} returned {got} results for a batch of "
                    f"{len(items)} calls (it must return a list of the same length)")
        except Exception as exc:  # the tool's own failure: every caller of the batch gets it
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        for call, result in zip(batch, results, strict=True):
            if not call.future.done():
                call.future.set_result((result, len(items)))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class BoundBatch:
    """A batched method on one instance: ``await obj.method(item)`` submits one item."""

    def __init__(self, queue: BatchQueue) -> None:
        self.queue = queue

    async def __call__(self, item: Any) -> Any:
        result, _ = await self.queue.submit(item)
        return result

    def set_max_batch_size(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.queue.max_batch_size = value

    def set_batch_wait_timeout_s(self, value: float) -> None:
        if value < 0:
            raise ValueError("batch_wait_timeout_s must be >= 0")
        self.queue.batch_wait_timeout_s = value


class BatchedMethod:
    """What ``@llmgw.batch`` makes of a method: a descriptor that gives each instance its
    own queue (kept in the instance's ``__dict__`` under the method's name)."""

    def __init__(self, fn: Callable[..., Any], max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        self.fn, self.max_batch_size = fn, max_batch_size
        self.batch_wait_timeout_s = batch_wait_timeout_s
        self.__name__ = getattr(fn, "__name__", "batched")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __set_name__(self, owner: type, name: str) -> None:
        self.__name__ = name

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        key = f"__llmgw_batch_{self.__name__}"
        bound = instance.__dict__.get(key)
        if bound is None:
            fn = self.fn

            def run(items: list[Any]) -> Any:
                if inspect.iscoroutinefunction(fn):
                    return fn(instance, items)
                # Sync batch code (numpy, a tokenizer) runs off the event loop.
                return asyncio.to_thread(fn, instance, items)

            bound = instance.__dict__[key] = BoundBatch(BatchQueue(
                run, f"{type(instance).__name__}.{self.__name__}", self.max_batch_size,
                self.batch_wait_timeout_s))
        return bound
