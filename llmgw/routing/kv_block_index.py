"""Which replica holds which KV blocks, as the engines themselves report it (vLLM's KV
cache events), for the precise prefix scorer.

Engines name blocks by their own hashes, which the gateway cannot recompute (vLLM seeds
them per process). Each stored block arrives with its token ids and its parent's hash,
so the index re-hashes the chain in its own scheme, the one it also applies to a
tokenized prompt: ``hash((parent, tokens))`` over full blocks, rooted at the adapter
name. A prompt's blocks then look up the replicas holding them directly. Pure data;
the subscriber that feeds it lives with the engine clients.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from llmgw.routing.affinity import matched_depths

EngineHash = Hashable  # vLLM sends int (default) or bytes

# Safety net for lost removal events: the engine's own evictions keep a replica's entry
# at its KV size; this bounds it when events go missing. The scorer tightens it to the
# engine's reported KV capacity.
DEFAULT_MAX_BLOCKS = 1_000_000


def _root(adapter: str | None) -> int:
    return hash(("llmgw-kv-root", adapter))


def chain_hash(parent: int, tokens: Sequence[int]) -> int:
    # Hashes of tuples of ints do not depend on PYTHONHASHSEED: stable across processes.
    return hash((parent, tuple(tokens)))


def prompt_block_hashes(tokens: Sequence[int], block_size: int, adapter: str | None,
                        max_blocks: int) -> list[int]:
    """The chained hashes of a prompt's full blocks, in the index's scheme."""
    hashes: list[int] = []
    parent = _root(adapter)
    for start in range(0, min(len(tokens) // block_size, max_blocks) * block_size, block_size):
        parent = chain_hash(parent, tokens[start:start + block_size])
        hashes.append(parent)
    return hashes


@dataclass(frozen=True, slots=True)
class StoredBlocks:
    """One vLLM ``BlockStored`` event, reduced to what the index uses."""

    block_hashes: Sequence[EngineHash]
    parent_block_hash: EngineHash | None
    token_ids: Sequence[int]
    block_size: int
    lora_name: str | None = None
    # Per block: extra hash inputs (LoRA name first when set, then multimodal ids, cache
    # salt). Blocks with anything beyond the LoRA name never match a plain prompt.
    extra_keys: Sequence[Sequence[object] | None] | None = None


class _ReplicaBlocks:
    __slots__ = ("blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        # engine hash -> our hash, oldest first (insertion order), for the bound.
        self.blocks: OrderedDict[EngineHash, int] = OrderedDict()
        self.capacity = capacity


class KVBlockIndex:
    """Our block hash -> replicas holding it, plus each replica's engine-hash mapping
    (removal events name engine hashes only). Not thread-safe: the event loop owns it."""

    def __init__(self, max_blocks_per_replica: int = DEFAULT_MAX_BLOCKS) -> None:
        self._max_blocks = max_blocks_per_replica
        self._holders: dict[int, set[str]] = {}
        self._replicas: dict[str, _ReplicaBlocks] = {}
        # vLLM reports it with every stored block; one model's replicas share it.
        self.block_size: int | None = None
        self.orphans = 0  # stored blocks whose parent was never seen (events missed)

    def _replica(self, replica_id: str) -> _ReplicaBlocks:
        blocks = self._replicas.get(replica_id)
        if blocks is None:
            blocks = self._replicas[replica_id] = _ReplicaBlocks(self._max_blocks)
        return blocks

    def blocks(self, replica_id: str) -> int:
        held = self._replicas.get(replica_id)
        return len(held.blocks) if held else 0

    def set_capacity(self, replica_id: str, blocks: int) -> None:
        held = self._replica(replica_id)
        held.capacity = max(1, min(blocks, self._max_blocks))
        self._trim(replica_id, held)

    def stored(self, replica_id: str, event: StoredBlocks) -> None:
        held = self._replica(replica_id)
        size = event.block_size
        self.block_size = size
        if event.parent_block_hash is None:
            parent = _root(event.lora_name)
        else:
            known = held.blocks.get(event.parent_block_hash)
            if known is None:
                self.orphans += len(event.block_hashes)
                return
            parent = known
        for i, engine_hash in enumerate(event.block_hashes):
            tokens = event.token_ids[i * size:(i + 1) * size]
            extra = event.extra_keys[i] if event.extra_keys else None
            salt = tuple(extra[1:] if event.lora_name else extra) if extra else ()
            parent = chain_hash(parent, tokens) if not salt else hash((parent, salt, tuple(tokens)))
            previous = held.blocks.pop(engine_hash, None)
            if previous is not None and previous != parent:
                self._drop(replica_id, previous)
            held.blocks[engine_hash] = parent
            self._holders.setdefault(parent, set()).add(replica_id)
        self._trim(replica_id, held)

    def removed(self, replica_id: str, engine_hashes: Iterable[EngineHash]) -> None:
        held = self._replicas.get(replica_id)
        if held is None:
            return
        for engine_hash in engine_hashes:
            ours = held.blocks.pop(engine_hash, None)
            if ours is not None:
                self._drop(replica_id, ours)

    def clear(self, replica_id: str) -> None:
        """The engine dropped everything (AllBlocksCleared) or restarted."""
        held = self._replicas.pop(replica_id, None)
        if held is not None:
            for ours in held.blocks.values():
                self._drop(replica_id, ours)
            self._replica(replica_id).capacity = held.capacity

    def matched(self, hashes: Sequence[int], replica_ids: Iterable[str]) -> dict[str, int]:
        """Replica id -> how many of ``hashes`` it holds as an unbroken prefix."""
        return matched_depths(hashes, self._holders, replica_ids)

    def _drop(self, replica_id: str, ours: int) -> None:
        holders = self._holders.get(ours)
        if holders is not None:
            holders.discard(replica_id)
            if not holders:
                del self._holders[ours]

    def _trim(self, replica_id: str, held: _ReplicaBlocks) -> None:
        while len(held.blocks) > held.capacity:
            _, ours = held.blocks.popitem(last=False)
            self._drop(replica_id, ours)
