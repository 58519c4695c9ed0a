"""Subscribers to engines' KV cache events (vLLM ``--kv-events-config``, ZMQ PUB), feeding
the model's :class:`KVBlockIndex`.

vLLM publishes three-part messages: topic, an 8-byte big-endian sequence number, and a
msgpack ``[ts, [event, ...], dp_rank]`` batch whose events are maps tagged by ``type``
(``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``); older vLLM encoded each event
as an array ``[type, field, ...]``. Both are read. A sequence number that goes backwards
means the engine restarted with an empty cache; one that skips means events were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from llmgw.metrics import KVEventMetrics
from llmgw.routing.kv_block_index import KVBlockIndex, StoredBlocks

log = logging.getLogger("llmgw.kv_events")
# Blocks held in another tier (CPU offload, storage) are not a prefix-cache hit as such.
_CACHE_MEDIA = (None, "GPU")
# Positional fields of the array-encoded (older vLLM) events, after the type tag.
_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                  "medium", "lora_name", "extra_keys")
_REMOVED_FIELDS = ("block_hashes", "medium")


def _as_map(event: Any) -> dict[str, Any] | None:
    if isinstance(event, dict):
        return event
    if isinstance(event, list) and event and isinstance(event[0], str):
        fields = {"BlockStored": _STORED_FIELDS, "BlockRemoved": _REMOVED_FIELDS}.get(
            event[0], ())
        return {"type": event[0], **dict(zip(fields, event[1:], strict=False))}
    return None


class KVEventStream:
    """Applies one engine's event batches to the index (no I/O: the subscriber reads)."""

    def __init__(self, replica_id: str, index: KVBlockIndex,
                 metrics: KVEventMetrics | None = None) -> None:
        self.replica_id, self.index, self.metrics = replica_id, index, metrics
        self.last_seq: int | None = None

    def apply(self, seq: int, payload: bytes) -> None:
        if seq < 0:  # vLLM's end-of-replay marker, not an event batch
            return
        if self.last_seq is not None:
            if seq <= self.last_seq:  # a new engine process counts from 0 again
                log.info("KV events of %s restarted (seq %d after %d): forgetting its blocks",
                         self.replica_id, seq, self.last_seq)
                self.index.clear(self.replica_id)
                self._count("restarted")
            elif seq > self.last_seq + 1:
                self._count("missed", seq - self.last_seq - 1)
        self.last_seq = seq
        try:
            batch = msgspec.msgpack.decode(payload)
            events: Sequence[Any] = batch[1]
        except (msgspec.DecodeError, IndexError, TypeError, KeyError):
            log.warning("undecodable KV event batch from %s", self.replica_id)
            return
        for raw in events:
            event = _as_map(raw)
            if event is not None:
                self._apply_event(event)
        if self.metrics is not None:
            self.metrics.blocks.set(self.index.blocks(self.replica_id))

    def _apply_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "BlockStored" and event.get("medium") in _CACHE_MEDIA:
            stored = StoredBlocks(
                block_hashes=event["block_hashes"],
                parent_block_hash=event.get("parent_block_hash"),
                token_ids=event["token_ids"], block_size=event["block_size"],
                lora_name=event.get("lora_name"), extra_keys=event.get("extra_keys"))
            self.index.stored(self.replica_id, stored)
            self._count("stored", len(stored.block_hashes))
        elif kind == "BlockRemoved" and event.get("medium") in _CACHE_MEDIA:
            self.index.removed(self.replica_id, event["block_hashes"])
            self._count("removed", len(event["block_hashes"]))
        elif kind == "AllBlocksCleared":
            self.index.clear(self.replica_id)
            self._count("cleared")

    def _count(self, what: str, amount: int = 1) -> None:
        if self.metrics is not None:
            getattr(self.metrics, what).inc(amount)


class KVEventSubscriber:
    """Reads one engine's publisher forever; ZMQ reconnects by itself when the engine
    restarts on the same address."""

    def __init__(self, endpoint: str, stream: KVEventStream, context: zmq.asyncio.Context) -> None:
        self.endpoint, self.stream = endpoint, stream
        self._socket = context.socket(zmq.SUB)
        self._socket.setsockopt(zmq.SUBSCRIBE, b"")  # one engine per publisher: any topic
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(endpoint)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"kv-events-{self.stream.replica_id}")

    async def _run(self) -> None:
        while True:
            try:
                parts = await self._socket.recv_multipart()
                if len(parts) != 3:
                    continue
                self.stream.apply(int.from_bytes(parts[1], "big", signed=True), parts[2])
            except asyncio.CancelledError:
                raise
            except Exception:  # a malformed message must not stop the stream
                log.exception("KV event from %s failed", self.endpoint)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._socket.close(linger=0)
