"""Iteration-level scheduler: one thread owns the model, asyncio tasks own requests.

Each step the scheduler thread (1) takes new requests and aborts from its inbox,
(2) admits waiting requests while fewer than `max_batch_size` run, prefilling each
and sampling its first token, then (3) decodes one more token for every running
sequence in a single batched forward. Torch work never runs on the event loop;
events travel back through `loop.call_soon_threadsafe` into a per-request queue.

Each sequence carries a LoRA slot (0: the base model), so one decode step serves
rows of different adapters together. Work that must not race a forward, such as
installing an adapter, goes through the same inbox (`run_on_scheduler`) and runs
between two steps, after every request submitted before it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from llmgw.engines.embedded.decoders import BatchedDecoder, Decoder, SequentialDecoder
from llmgw.engines.embedded.lora_layers import BASE_SLOT
from llmgw.engines.embedded.model_runner import ModelRunner
from llmgw.engines.embedded.sampling import SamplingParams, make_rng, select_token
from llmgw.engines.embedded.text_output import TextAssembler

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Event:
    """A piece of one request's output, in order. The last one has `finish_reason`.

    `finish_reason` is "stop", "length" or "error"; `stop_reason` is the matched stop
    string or stop token id (None for EOS), as vLLM reports it. `completion_tokens`
    counts every generated token so far, EOS included.
    """

    text: str
    completion_tokens: int
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(frozen=True, slots=True)
class SchedulerStats:
    """A snapshot; `*_adapters` hold the LoRA slot of each running / waiting request."""

    running: int
    waiting: int
    aborted_total: int
    running_adapters: tuple[int, ...] = ()
    waiting_adapters: tuple[int, ...] = ()


class RequestHandle:
    """The asyncio side of one request: iterate its events, `abort()` to give up.

    Use from the event loop that called `Generator.submit`; not thread-safe.
    """

    def __init__(self, generator: Generator, request_id: int, prompt_tokens: int) -> None:
        self._generator = generator
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.finished = False
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __aiter__(self) -> RequestHandle:
        return self

    async def __anext__(self) -> Event:
        if self.finished:
            raise StopAsyncIteration
        event = await self.queue.get()
        self.finished = event.finish_reason is not None
        return event

    def abort(self) -> None:
        """Drop the request at the scheduler's next step; a no-op once finished."""
        if not self.finished:
            self.finished = True
            self._generator.abort(self.request_id)


@dataclass(eq=False)
class _Sequence:
    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    text: TextAssembler
    rng: torch.Generator | None
    adapter: int = BASE_SLOT
    output_ids: list[int] = field(default_factory=list)
    # Ids sampling must avoid below `min_tokens`; built on the scheduler thread when
    # first needed (up to a vocabulary's worth: not work for the event loop).
    banned: torch.Tensor | None = None

    @property
    def next_position(self) -> int:
        """Position of the last sampled token, which the next forward consumes."""
        return len(self.prompt_ids) + len(self.output_ids) - 1


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: int


@dataclass(frozen=True, slots=True)
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn()
        except Exception as exc:  # handed to the caller, whose await re-raises it
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


_STOP = object()


class Generator:
    """Owns the model and the scheduler thread; see the module docstring.

    `submit` and `abort` may be called from any event-loop thread; everything else
    runs on the scheduler thread. `batched=None` picks batched decoding when the
    model's cache layout allows it (plain full attention).
    """

    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Any,
        *,
        eos_token_ids: Collection[int],
        max_model_len: int,
        max_batch_size: int = 16,
        batched: bool | None = None,
    ) -> None:
        self._runner = runner
        self._tokenizer = tokenizer
        self._eos = frozenset(eos_token_ids)
        self.max_model_len = max_model_len
        self._max_batch = max_batch_size
        use_batch = runner.supports_padded_batches() if batched is None else batched
        self._decoder: Decoder = (BatchedDecoder if use_batch else SequentialDecoder)(runner)
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._aborted_total = 0
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="llmgw-generator", daemon=True)

    # -- event-loop side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop the thread after its current step; unfinished requests get no more events."""
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join()

    def alive(self) -> bool:
        """False once the scheduler thread has stopped (closed, or died on a bug)."""
        return self._thread.is_alive()

    def stats(self) -> SchedulerStats:
        # Reads of scheduler-owned containers: list() copies each one in a single step
        # under the GIL, so a concurrent scheduler step cannot break the iteration.
        running, waiting = list(self._running), list(self._waiting)
        return SchedulerStats(
            len(running),
            len(waiting),
            self._aborted_total,
            tuple(s.adapter for s in running),
            tuple(s.adapter for s in waiting),
        )

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, adapter: int = BASE_SLOT
    ) -> RequestHandle:
        """Queue a validated request, to run through LoRA slot `adapter`; call from a
        running event loop."""
        handle = RequestHandle(self, next(self._ids), len(prompt_ids))
        text = TextAssembler(
            self._tokenizer,
            prompt_ids,
            params.stop,
            params.include_stop_str_in_output,
            params.skip_special_tokens,
        )
        loop = asyncio.get_running_loop()
        seq = _Sequence(
            handle.request_id,
            prompt_ids,
            params,
            loop,
            handle.queue,
            text,
            make_rng(params),
            adapter,
        )
        self._inbox.put(seq)
        return handle

    def abort(self, request_id: int) -> None:
        self._inbox.put(_Abort(request_id))

    def run_on_scheduler(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `fn` on the scheduler thread between two steps, after everything put in
        the inbox before it; its result or exception arrives through the future."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if not self._thread.is_alive():
            future.set_exception(RuntimeError("the scheduler thread is not running"))
        else:
            self._inbox.put(_Call(fn, future))
        return future

    def embed(self, prompts: list[list[int]],
              adapter: int = BASE_SLOT) -> concurrent.futures.Future[list[list[float]]]:
        """Each prompt's pooled embedding (``ModelRunner.embed``), computed on the
        scheduler thread between two steps, so it never races a forward."""
        return self.run_on_scheduler(lambda: [self._runner.embed(p, adapter) for p in prompts])

    @property
    def hidden_size(self) -> int:
        return self._runner.hidden_size

    def adapters_in_use(self) -> set[int]:
        """LoRA slots of queued and running requests; scheduler thread only (say, in
        a `run_on_scheduler` call)."""
        return {s.adapter for s in self._running} | {s.adapter for s in self._waiting}

    # -- scheduler thread --------------------------------------------------------------

    def _loop(self) -> None:
        while self._drain_inbox(block=not (self._running or self._waiting)):
            self._admit()
            if self._running:
                self._decode_step()

    def _drain_inbox(self, block: bool) -> bool:
        """Move new requests to the waiting queue and apply aborts; False on close."""
        aborts: set[int] = set()
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                if item is _STOP:
                    return False
                if isinstance(item, _Abort):
                    aborts.add(item.request_id)
                elif isinstance(item, _Sequence):
                    self._waiting.append(item)
                elif isinstance(item, _Call):
                    item.run()
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
        if aborts:
            self._apply_aborts(aborts)
        return True

    def _apply_aborts(self, ids: set[int]) -> None:
        before = len(self._waiting) + len(self._running)
        self._waiting = deque(s for s in self._waiting if s.request_id not in ids)
        keep = [i for i, s in enumerate(self._running) if s.request_id not in ids]
        if len(keep) < len(self._running):
            self._decoder.keep(keep)
            self._running = [self._running[i] for i in keep]
        self._aborted_total += before - len(self._waiting) - len(self._running)

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self._max_batch:
            seq = self._waiting.popleft()
            try:
                logits, cache = self._runner.prefill(seq.prompt_ids, seq.adapter)
                finished, event = self._advance(seq, logits)
            except Exception:
                log.exception("prefill failed (request %d)", seq.request_id)
                _deliver([(seq, Event("", len(seq.output_ids), "error"))])
                continue
            if not finished:
                self._decoder.add(cache)
                self._running.append(seq)
            # Emit after the books are right, so a client that reacts to this event
            # (say, by scraping /metrics) sees its request counted.
            if event is not None:
                _deliver([(seq, event)])

    def _decode_step(self) -> None:
        batch = self._running
        tokens = [s.output_ids[-1] for s in batch]
        positions = [s.next_position for s in batch]
        try:
            logits = self._decoder.step(tokens, positions, [s.adapter for s in batch])
            results = [self._advance(s, logits[i]) for i, s in enumerate(batch)]
        except Exception:
            log.exception("decode step failed; failing %d requests", len(batch))
            results = [(True, Event("", len(s.output_ids), "error")) for s in batch]
        keep = [i for i, (finished, _) in enumerate(results) if not finished]
        if len(keep) < len(batch):
            self._decoder.keep(keep)
            self._running = [batch[i] for i in keep]
        pairs = zip(batch, results, strict=True)
        _deliver([(seq, event) for seq, (_, event) in pairs if event is not None])

    def _advance(self, seq: _Sequence, logits: torch.Tensor) -> tuple[bool, Event | None]:
        """Sample one token for `seq`; returns (done, the event to emit if any)."""
        params = seq.params
        below_min = len(seq.output_ids) < params.min_tokens
        if below_min and seq.banned is None:
            ends = params.stop_token_ids | (frozenset() if params.ignore_eos else self._eos)
            seq.banned = torch.tensor(sorted(ends), dtype=torch.long)
        token = select_token(logits, params, seq.rng, banned=seq.banned if below_min else None)
        seq.output_ids.append(token)
        count = len(seq.output_ids)
        delta = seq.text.push(token, check_stop=count >= params.min_tokens)
        finish: str | None = None
        reason: str | int | None = None
        if seq.text.stop_reason is not None:
            finish, reason = "stop", seq.text.stop_reason
        elif token in params.stop_token_ids:
            finish, reason = "stop", token
        elif token in self._eos and not params.ignore_eos:
            finish = "stop"
        elif count >= params.max_tokens or len(seq.prompt_ids) + count >= self.max_model_len:
            finish = "length"
        if finish is not None:
            delta += seq.text.flush()
        event = Event(delta, count, finish, reason) if delta or finish is not None else None
        return finish is not None, event


def _deliver(items: list[tuple[_Sequence, Event]]) -> None:
    """Hand events to their event loops: one wake-up per loop and step, not per token."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Event], Event]]] = {}
    for seq, event in items:
        by_loop.setdefault(seq.loop, []).append((seq.queue, event))
    for loop, batch in by_loop.items():
        # A closed loop (shutdown) raises RuntimeError: nobody is listening then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_put_all, batch)


def _put_all(batch: list[tuple[asyncio.Queue[Event], Event]]) -> None:
    for q, event in batch:
        q.put_nowait(event)
