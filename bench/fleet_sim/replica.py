"""One simulated engine replica: its KV cache, its scheduler and its cost model.

A request takes one of ``max_running`` batch slots (FIFO queue when all are taken), then
prefills on the replica's single prefill lane (prefill is compute-bound, so concurrent
prefills share the accelerator: serializing them keeps its throughput fixed), then decodes
one token per batch step. Steps are shared by the whole batch (iteration-level batching):
one timer per replica, ``decode_ms_per_token`` apart, advances every running request.
Prefill and decode overlap, as with chunked prefill whose cost is not charged to decodes.

Times are simulated by really sleeping on the event loop; nothing here burns CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.fleet_sim.adapters import AdapterSlots
from bench.fleet_sim.kv_cache import BlockLRU
from bench.fleet_sim.tokens import block_hashes, token_count


@dataclass(frozen=True)
class CostModel:
    """Per-replica costs. Defaults resemble an 8B model on one H100 at small batch:
    ~20k prefill tokens/s, ~200 decode tokens/s per sequence, 32k tokens of KV cache."""

    prefill_ms_per_token: float = 0.05
    decode_ms_per_token: float = 5.0
    max_running: int = 8
    kv_blocks: int = 2048
    block_tokens: int = 16
    # Cache the reply's blocks too (vLLM does), so the next chat turn hits its history.
    cache_generated: bool = True
    # LoRA: adapters resident at once (vLLM's --max-loras) and the accelerator time one
    # load takes (weights from host memory into the slot).
    max_loras: int = 4
    lora_load_ms: float = 50.0


@dataclass
class Prefill:
    """What the prefill of one request found and cost, in tokens and simulated ms."""

    prompt_tokens: int
    cached_tokens: int
    queue_ms: float = 0.0  # waiting for a batch slot
    lane_ms: float = 0.0  # waiting for other requests' prefills
    load_ms: float = 0.0  # waiting for a LoRA adapter slot and loading it, when not resident
    prefill_ms: float = 0.0  # this request's own prefill compute


@dataclass
class _Counters:
    requests: int = 0
    aborted: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    generation_tokens: int = 0
    # Integral of (running + waiting) over time, for the time-averaged load.
    load_area_s: float = 0.0
    since: float = field(default_factory=time.monotonic)


class SimReplica:
    """A simulated engine. Event-loop only; every method is called from one loop."""

    def __init__(self, name: str, cost: CostModel) -> None:
        self.name = name
        self.cost = cost
        self.cache = BlockLRU(cost.kv_blocks)
        self.adapters = AdapterSlots(cost.max_loras)
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._lane = asyncio.Lock()  # FIFO: waiters acquire in arrival order
        self._step: asyncio.Future[None] | None = None
        self._stepper: asyncio.Task[None] | None = None
        self._freed: asyncio.Future[None] | None = None  # an adapter's last request ended
        self._kv_tokens: dict[int, int] = {}  # request key -> tokens it holds, while running
        self.counters = _Counters()
        self._load_mark = time.monotonic()

    # --- scheduling ---------------------------------------------------------------------

    def _mark_load(self) -> None:
        now = time.monotonic()
        in_system = self.running + len(self._waiters)
        self.counters.load_area_s += in_system * (now - self._load_mark)
        self._load_mark = now

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold a batch slot; yields the ms spent queued for it."""
        started = time.monotonic()
        self._mark_load()
        if self.running >= self.cost.max_running or self._waiters:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._leave_queue(waiter)
                raise
        self._mark_load()
        self.running += 1
        try:
            yield (time.monotonic() - started) * 1000
        finally:
            self._mark_load()
            self.running -= 1
            self._wake_next()

    def _leave_queue(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        elif waiter.done() and not waiter.cancelled():
            # Woken and cancelled in the same tick: the slot it was given goes to the next.
            self._wake_next()

    def _wake_next(self) -> None:
        while self._waiters and self.running < self.cost.max_running:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # --- prefill and decode -------------------------------------------------------------

    def _hit_limit(self, prompt_tokens: int) -> int:
        """Blocks that can hit: as in vLLM, the last prompt token is always computed, so
        only full blocks within the first n-1 tokens count."""
        return max(0, prompt_tokens - 1) // self.cost.block_tokens

    def match(self, prompt: str, adapter: str | None = None) -> int:
        """Tokens of ``prompt`` cached here now (a lookup, not a use)."""
        hashes = block_hashes(prompt, self.cost.block_tokens, adapter=adapter)
        return self.cache.cached_prefix(hashes[:self._hit_limit(token_count(prompt))]) \
            * self.cost.block_tokens

    # --- LoRA adapters ------------------------------------------------------------------

    async def load_adapter(self, name: str) -> None:
        """Make adapter ``name`` resident: wait for a slot no request uses, then load it
        on the prefill lane (a load occupies the accelerator as a prefill does)."""
        while not self.adapters.touch(name):
            if not self.adapters.has_room():
                await self._adapter_freed()
                continue
            async with self._lane:
                if name not in self.adapters and self.adapters.has_room():
                    self.adapters.make_room()  # now: a request could pin the victim
                    await asyncio.sleep(self.cost.lora_load_ms / 1000)
                    self.adapters.load(name)

    async def _adapter_freed(self) -> None:
        if self._freed is None or self._freed.done():
            self._freed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._freed)  # one waiter cancelled must not wake the others

    @asynccontextmanager
    async def adapter(self, name: str | None) -> AsyncIterator[float]:
        """Hold ``name`` resident while the request runs (no eviction under it); yields the
        ms spent waiting for a slot and loading it. ``None``: the base model, no wait."""
        if name is None:
            yield 0.0
            return
        started, waited_ms = time.monotonic(), 0.0
        if not self.adapters.touch(name):
            await self.load_adapter(name)
            waited_ms = (time.monotonic() - started) * 1000
        self.adapters.pin(name)  # no await since it was found resident
        try:
            yield waited_ms
        finally:
            self.adapters.unpin(name)
            if self._freed is not None and not self._freed.done():
                self._freed.set_result(None)

    # --- prefill and decode -------------------------------------------------------------

    async def prefill(self, prompt: str, queue_ms: float, key: int,
                      adapter: str | None = None, load_ms: float = 0.0) -> Prefill:
        hashes = block_hashes(prompt, self.cost.block_tokens, adapter=adapter)
        n = token_count(prompt)
        lane_started = time.monotonic()
        async with self._lane:
            lane_ms = (time.monotonic() - lane_started) * 1000
            # Looked up now, not on arrival: a wait may have changed the cache.
            cached = self.cache.cached_prefix(hashes[:self._hit_limit(n)]) * self.cost.block_tokens
            result = Prefill(n, cached, queue_ms, lane_ms, load_ms)
            result.prefill_ms = (n - cached) * self.cost.prefill_ms_per_token
            await asyncio.sleep(result.prefill_ms / 1000)
            self.cache.use(hashes)  # inside the lane: the next prefill sees these blocks
        self.counters.prompt_tokens += n
        self.counters.cached_tokens += cached
        self._kv_tokens[key] = n
        return result

    async def next_step(self, key: int) -> None:
        """Wait for the next batch step: one more decoded token for this request."""
        if self._step is None or self._step.done():
            self._step = asyncio.get_running_loop().create_future()
            if self._stepper is None or self._stepper.done():
                self._stepper = asyncio.create_task(self._run_steps())
        await asyncio.shield(self._step)
        self._kv_tokens[key] = self._kv_tokens.get(key, 0) + 1

    async def _run_steps(self) -> None:
        """Resolve one step every decode period while anyone waits for one."""
        while self._step is not None and not self._step.done():
            await asyncio.sleep(self.cost.decode_ms_per_token / 1000)
            step, self._step = self._step, None
            if not step.done():
                step.set_result(None)

    def finish(self, key: int, full_text: str, generated: int, completed: bool,
               adapter: str | None = None) -> None:
        """The request left: count it, and cache its generated blocks when it completed."""
        self._kv_tokens.pop(key, None)
        self.counters.requests += 1
        self.counters.generation_tokens += generated
        if not completed:
            self.counters.aborted += 1
        elif self.cost.cache_generated:
            self.cache.use(block_hashes(full_text, self.cost.block_tokens, adapter=adapter))

    # --- reporting ----------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def kv_usage(self) -> float:
        """Blocks held by running requests / capacity, as vLLM reports it (cached blocks
        no request holds count as free)."""
        bt = self.cost.block_tokens
        held = sum(-(-tokens // bt) for tokens in self._kv_tokens.values())
        return min(1.0, held / self.cost.kv_blocks)

    def state(self) -> dict[str, Any]:
        self._mark_load()
        c = self.counters
        elapsed = max(1e-9, time.monotonic() - c.since)
        return {
            "replica": self.name, "blocks": len(self.cache), "capacity": self.cost.kv_blocks,
            "evicted_blocks": self.cache.evicted, "running": self.running,
            "waiting": self.waiting, "requests": c.requests, "aborted": c.aborted,
            "prompt_tokens": c.prompt_tokens, "hits_tokens": c.cached_tokens,
            "queries_tokens": c.prompt_tokens, "generation_tokens": c.generation_tokens,
            "load_avg": c.load_area_s / elapsed, "seconds": elapsed,
            "adapters": self.adapters.names(), "adapter_loads": self.adapters.loads,
            "adapter_evictions": self.adapters.evictions,
        }

    def reset(self) -> None:
        """Empty the cache and zero the counters (requests in flight are not touched)."""
        self.cache.clear()
        self.adapters.clear()
        self.counters = _Counters()
        self._load_mark = self.counters.since
