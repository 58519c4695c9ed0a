"""One instance of a deployment's class and the calls it runs: in a worker process
(llmgw.tools.worker) or inside the gateway (``replicas: 0``).

Arguments are validated against the tool's schema before the method runs. Async methods
run on the event loop; sync methods in a thread (never on the loop); batched methods
through their instance's batch queue. Whatever the tool raises becomes ``ToolRaised``
with its type and message.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from llmgw.config import ToolConfig
from llmgw.tools.batching import BoundBatch
from llmgw.tools.registry import load_class
from llmgw.tools.schema import ToolSpec


class ToolRaised(Exception):
    """The tool's code raised; ``str()`` is ``Type: message``."""


class UnknownMethod(Exception):
    """A call for a method that is not one of the deployment's tools."""


class ToolHost:
    """Build with ``await ToolHost.create(cfg, specs)`` (the constructor may be slow:
    it runs in a thread). One event loop."""

    def __init__(self, instance: object, specs: list[ToolSpec]) -> None:
        self.instance = instance
        self.specs = {spec.method: spec for spec in specs}

    @classmethod
    async def create(cls, cfg: ToolConfig, specs: list[ToolSpec]) -> ToolHost:
        klass = load_class(cfg.import_path)
        instance = await asyncio.to_thread(functools.partial(klass, **cfg.init_args))
        host = cls(instance, specs)
        for method, bounds in cfg.batch.items():
            host.set_batch_bounds(method, bounds.max_batch_size, bounds.batch_wait_timeout_s)
        return host

    def set_batch_bounds(self, method: str, max_batch_size: int | None,
                         batch_wait_timeout_s: float | None) -> None:
        """Raises UnknownMethod for a method that is not batched, ValueError for a bad
        bound; the next batch uses the new bounds."""
        bound = self._batched(method)
        if max_batch_size is not None:
            bound.set_max_batch_size(max_batch_size)
        if batch_wait_timeout_s is not None:
            bound.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def call(self, method: str, arguments: object) -> tuple[Any, int | None]:
        """The JSON-able result and, for a batched tool, the size of its batch. Raises
        UnknownMethod, ArgumentsInvalid (llmgw.tools.schema) or ToolRaised."""
        spec = self.specs.get(method)
        if spec is None:
            raise UnknownMethod(method)
        args, kwargs = spec.call_input(spec.validate(arguments))
        try:
            if spec.batched is not None:
                result, size = await self._batched(method).queue.submit(args[0])
                return spec.dump(result), size
            fn = getattr(self.instance, method)
            if inspect.iscoroutinefunction(fn):
                result = await fn(**kwargs)
            else:
                result = await asyncio.to_thread(functools.partial(fn, **kwargs))
            return spec.dump(result), None
        except Exception as exc:  # the tool's own error, or a result JSON cannot carry
            raise ToolRaised(f"{type(exc).__name__}: {exc}") from exc

    def _batched(self, method: str) -> BoundBatch:
        spec = self.specs.get(method)
        if spec is None or spec.batched is None:
            raise UnknownMethod(method)
        bound = getattr(self.instance, method)
        assert isinstance(bound, BoundBatch)
        return bound

    async def close(self) -> None:
        for spec in self.specs.values():
            if spec.batched is not None:
                await self._batched(spec.method).queue.close()
