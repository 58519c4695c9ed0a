"""Tool classes for the tests: ones that record what they ran (calls, batch sizes), fail
on request, or have signatures `llmgw check` must refuse. Imported by the gateway and by
its tool workers as ``tests.fakes.tools:Name`` (tests run from the repository root)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

import llmgw
import llmgw.context


class Point(BaseModel):
    x: int
    y: int = 0


class Recorder:
    """Calls record their batch sizes, process id and thread, so tests can see where and
    how they ran. ``gate``: each ``slow`` call waits for a file to exist (a test holds
    calls in flight without sleeping)."""

    def __init__(self, tag: str = "r", gate: str | None = None) -> None:
        self.tag, self.gate = tag, gate
        self.batches: list[int] = []

    @llmgw.tool
    def echo(self, text: Annotated[str, Field(description="What to echo")],
             times: int = 1) -> dict[str, Any]:
        """Echo a text back.

        The rest of the docstring is not part of the description."""
        return {"text": text * times, "pid": os.getpid(), "tag": self.tag,
                "on_loop_thread": threading.current_thread() is threading.main_thread()}

    @llmgw.tool
    async def add(self, point: Point) -> int:
        """Add a point's coordinates."""
        return point.x + point.y

    @llmgw.tool
    def fail(self, message: str) -> str:
        """Raise an error with this message."""
        raise ValueError(message)

    @llmgw.tool
    async def slow(self, marker: str) -> int:
        """Wait until the gate file exists, then answer the process id (``<gate>.<marker>``
        says the call has started)."""
        if self.gate is not None:
            with open(f"{self.gate}.{marker}", "w"):
                pass
        while self.gate is not None and not os.path.exists(self.gate):
            await asyncio.sleep(0.01)  # polling a file another process creates
        return os.getpid()

    @llmgw.tool
    @llmgw.batch(max_batch_size=4, batch_wait_timeout_s=30)
    async def square(self, n: list[int]) -> list[int]:
        """Square numbers, a batch at a time (a negative number fails its batch)."""
        self.batches.append(len(n))
        if any(i < 0 for i in n):
            raise ValueError(f"negative number in batch {n}")
        return [i * i for i in n]

    @llmgw.tool
    @llmgw.batch(max_batch_size=8, batch_wait_timeout_s=0)
    def short(self, n: list[int]) -> list[int]:
        """Returns one result too few: a broken batched method."""
        return [i for i in n][1:]

    @llmgw.tool
    def batch_sizes(self) -> list[int]:
        """The sizes of the batches ``square`` ran."""
        return self.batches


class Untyped:
    @llmgw.tool
    def run(self, query) -> str:  # type: ignore[no-untyped-def]
        return str(query)


class VarArgs:
    @llmgw.tool
    def run(self, *queries: str) -> str:
        return ",".join(queries)


class BadBatch:
    @llmgw.tool
    @llmgw.batch
    async def run(self, a: int, b: int) -> list[int]:
        return [a + b]


class BadName:
    @llmgw.tool(name="has space")
    def run(self, q: str) -> str:
        return q


class NoTools:
    def run(self, q: str) -> str:
        return q


class Clash:
    @llmgw.tool(name="weather")
    def run(self, q: str) -> str:
        return q


NOT_A_CLASS = 3


class Composer:
    """Tools that call the gateway that called them (llmgw.context). ``own_name``: the
    name its ``recurse`` tool has; ``model``: the model ``ask`` asks."""

    def __init__(self, own_name: str = "comp_recurse", model: str = "agent") -> None:
        self.own_name, self.model = own_name, model

    @llmgw.tool
    async def relay(self, city: str) -> str:
        """Ask the weather tool, through the gateway."""
        return "via: " + str(await llmgw.context.call_tool("weather", {"city": city}))

    @llmgw.tool
    async def recurse(self, n: int) -> int:
        """Call itself until the gateway refuses; answer the depth reached."""
        try:
            return int(await llmgw.context.call_tool(self.own_name, {"n": n + 1}))
        except llmgw.context.ToolCallFailed as exc:
            assert exc.error["code"] == "tool_depth_exceeded", exc.error
            return llmgw.context.current().depth

    @llmgw.tool
    def ask(self, question: str) -> str:
        """Ask the model (a sync method: its thread runs its own event loop)."""

        async def chat() -> str:
            answer = await llmgw.context.client(max_retries=0).chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": question}],
                max_tokens=3)
            return str(answer.choices[0].message.content)

        return asyncio.run(chat())


class Broken:
    """A class whose constructor fails: its workers never become ready."""

    def __init__(self) -> None:
        raise RuntimeError("cannot load the model weights")

    @llmgw.tool
    def run(self, q: str) -> str:
        return q


class Gated:
    """Starts only once the file named by ``LLMGW_TEST_GATE`` exists: a test holds the
    gateway in its start-up (tests/api/test_cli_up.py) and lets it go."""

    def __init__(self) -> None:
        gate = Path(os.environ["LLMGW_TEST_GATE"])
        deadline = time.monotonic() + 60
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    @llmgw.tool
    def ping(self) -> str:
        """Answers pong."""
        return "pong"
