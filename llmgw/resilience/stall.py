"""A stream whose engine goes quiet: ``timeouts.stream_idle_s`` bounds the gap between
two of the engine's event blocks once its headers came (the first token's prefill
included). Without it, a replica hung mid-stream (stopped, wedged, its node cut off
without a reset) holds the client until the request's own deadline, which is unlimited
by default. Wrapped around the engine's blocks only when set, so it costs nothing off.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmgw.errors import StreamIdleTimeout


async def until_idle(blocks: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """``blocks`` as they come; raises StreamIdleTimeout when none comes for ``idle_s``.
    The timeout spans only the wait for the next block, never this generator's yields
    (the caller's sends to a slow client are not the engine's silence)."""
    while True:
        try:
            async with asyncio.timeout(idle_s):
                block = await anext(blocks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamIdleTimeout(f"the engine sent nothing for {idle_s}s mid-stream "
                                    "(timeouts.stream_idle_s)") from None
        yield block
