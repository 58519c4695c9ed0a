"""Calling Ray actors from the gateway's event loop: awaiting their results without
blocking it, and reading their errors as an operator would."""

from __future__ import annotations

import asyncio
from typing import Any


async def result(ref: Any, timeout_s: float | None = None) -> Any:
    """Await a Ray ObjectRef without blocking the event loop."""
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)


def reason(exc: BaseException) -> str:
    """A Ray error as an operator reads it: the engine's message, not Ray's wrapping."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and str(cause):
        return str(cause)
    return str(exc).strip() or type(exc).__name__
