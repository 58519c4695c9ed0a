"""The stream relay's framing: blocks of events in, the client's events out, with the
engine's usage chunk kept or dropped and [DONE] left for the gateway to send."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from llmgw.config import TimeoutConfig
from llmgw.engines.openai_http import OpenAIHTTPEngine
from llmgw.exchange import Exchange
from llmgw.metrics import Metrics, ModelMetrics, ReplicaMetrics
from llmgw.model_group import ModelGroup
from llmgw.pool import Replica
from llmgw.routing.registry import make_policy
from llmgw.types import ReplicaAddress, RequestContext

CHUNK = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
TRICKY = b'data: {"choices":[{"delta":{"content":"data: [DONE] \\"choices\\":[]"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


class BlockUpstream:
    status = 200

    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks
        self.closed = False

    async def read(self) -> bytes:
        return b"".join(self.blocks)

    async def event_blocks(self) -> AsyncIterator[bytes]:
        for block in self.blocks:
            yield block

    def close(self) -> None:
        self.closed = True


def exchange(blocks: list[bytes]) -> Exchange:
    metrics = Metrics()
    replica = Replica("r0", "m", engine=None,  # type: ignore[arg-type]
                      metrics=ReplicaMetrics(metrics, "m", "r0", "least-load"),
                      address=ReplicaAddress("r0", "http://r0"))
    replica.acquire()
    group = ModelGroup(name="m", upstream_model="m", engine=OpenAIHTTPEngine, replicas=[replica],
                       policy=make_policy("least-load", random.Random(0)), policy_name="least-load",
                       timeouts=TimeoutConfig(), max_attempts=1,
                       metrics=ModelMetrics(metrics, "m"))
    ctx = RequestContext(request_id="x", model="m", endpoint="chat", stream=True)
    return Exchange(ctx, group, replica, BlockUpstream(blocks), started=0.0, deadline=None,
                    upstream_id="u1")


async def relayed(ex: Exchange, keep_usage: bool) -> bytes:
    return b"".join([block async for block in ex.relay(keep_usage)])


@pytest.mark.parametrize(
    ("blocks", "keep_usage", "expected"),
    [
        ([CHUNK, CHUNK, USAGE, DONE], False, CHUNK * 2),
        ([CHUNK, CHUNK, USAGE, DONE], True, CHUNK * 2 + USAGE),
        ([CHUNK + CHUNK + USAGE + DONE], False, CHUNK * 2),
        ([CHUNK + USAGE + DONE], True, CHUNK + USAGE),
        ([TRICKY, DONE], False, TRICKY),
        ([CHUNK, DONE, CHUNK], False, CHUNK),
        ([CHUNK, CHUNK], False, CHUNK * 2),
    ],
    ids=["separate-drop-usage", "separate-keep-usage", "one-block-drop", "one-block-keep",
         "done-and-usage-inside-content", "nothing-after-done", "no-done"],
)
async def test_relay(blocks: list[bytes], keep_usage: bool, expected: bytes) -> None:
    ex = exchange(blocks)
    assert await relayed(ex, keep_usage) == expected
    had_usage = any(b'"usage"' in b for b in blocks)
    assert ex.usage == ({"prompt_tokens": 3, "completion_tokens": 2} if had_usage else None)


async def test_finish_releases_once_and_closes_upstream() -> None:
    ex = exchange([CHUNK, DONE])
    await relayed(ex, False)
    ex.finish("ok", 200)
    ex.finish("ok", 200)
    assert ex.replica.in_flight == 0
    assert ex.upstream.closed  # type: ignore[attr-defined]
