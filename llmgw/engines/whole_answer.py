"""A non-streaming answer read to its end as part of its attempt.

An engine sends a non-streaming answer's headers once generation is done, so a body that
breaks off after them (the engine died while sending it) leaves a request that another
replica may take (llmgw.resilience.retry): the dispatcher and the decode leg of a
disaggregated request (both flows: vLLM's, and SGLang's, which sends the pair again)
read the whole body before they count the attempt as answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmgw.engines.base import UpstreamResponse
from llmgw.errors import UpstreamTimeout


async def read_whole(upstream: UpstreamResponse, until: float | None) -> bytes:
    """The body to its end. Raises UpstreamTimeout past ``until`` (event loop time) and
    whatever the read raises (AnswerBroken), having closed the connection either way."""
    try:
        if until is None:
            return await upstream.read()
        async with asyncio.timeout_at(until):
            return await upstream.read()
    except TimeoutError:
        upstream.close()
        raise UpstreamTimeout("the request exceeded its time limit") from None
    except BaseException:
        upstream.close()
        raise


async def whole_answer(upstream: UpstreamResponse, until: float | None) -> WholeAnswer:
    """``read_whole``, as an answer that can stand in for ``upstream`` (a decode leg's)."""
    return WholeAnswer(upstream.status, await read_whole(upstream, until))


class WholeAnswer:
    """An answer already read to its end (``read_whole``), as an ``UpstreamResponse``: its
    connection is back in its pool, so ``close`` has nothing left to do."""

    __slots__ = ("status", "_body")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def event_blocks(self) -> AsyncIterator[bytes]:
        """None: a non-streaming answer has no events."""
        return
        yield

    def close(self) -> None:
        pass
