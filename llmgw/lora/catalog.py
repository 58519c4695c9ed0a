"""Which adapters exist, for which base model, from where: the config's adapters plus
those registered or removed at runtime through the admin API. Runtime changes are kept
in a state file (llmgw.lora.state), so they survive a restart or a config reload; a
change is saved before it takes effect, so one the file cannot keep is not made.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmgw.lora.state import StateError, read_state, write_state

log = logging.getLogger("llmgw.lora")


class CatalogError(Exception):
    """A runtime change that cannot be made; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


class StateNotSaved(CatalogError):
    """The state file could not be written, so the change was not made (server-side)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 500)


@dataclass(frozen=True, slots=True)
class Adapter:
    """One registration of an adapter. Two registrations under one name (removed, then
    registered again) are two adapters: ``generation`` tells them apart even when the
    source is the same directory (whose files may have changed)."""

    name: str
    base: str  # the served model name it belongs to
    source: str  # what the engine loads: a directory (or a hub id from the config)
    origin: Literal["config", "runtime"] = "config"
    generation: int = 0  # 0 for the config's; runtime registrations count from 1


class AdapterCatalog:
    """Adapter name -> Adapter, names unique across all base models and never one of the
    ``reserved`` names (the served models). One event loop; not thread-safe."""

    def __init__(self, configured: Iterable[Adapter], roots: dict[str, list[str]],
                 state_file: Path | None = None, reserved: Iterable[str] = ()) -> None:
        self._adapters = {a.name: a for a in configured}
        self._configured = dict(self._adapters)
        # base model -> directories runtime sources must lie under (resolved).
        self._roots = {base: [Path(os.path.realpath(os.path.expanduser(r))) for r in dirs]
                       for base, dirs in roots.items()}
        self._state_file = state_file
        self._reserved = frozenset(reserved)
        # Configured adapters removed at runtime: they stay removed across restarts even
        # if a runtime adapter took the name since.
        self._removed: frozenset[str] = frozenset()
        self._generations = itertools.count(1)
        self._load_state()

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def reconfigure(self, configured: Iterable[Adapter], roots: dict[str, list[str]],
                    reserved: Iterable[str]) -> list[Adapter]:
        """A reload's adapters and roots. Runtime registrations stay (their model still
        has ``lora:``), as do runtime removals of configured adapters; a configured
        adapter whose name, base and source are unchanged stays the same adapter (its
        residency holds). Returns the adapters that left, to be retired."""
        self._roots = {base: [Path(os.path.realpath(os.path.expanduser(r))) for r in dirs]
                       for base, dirs in roots.items()}
        self._reserved = frozenset(reserved)
        self._configured = {a.name: a for a in configured}
        adapters = {n: a for n, a in self._adapters.items()
                    if a.origin == "runtime" and a.base in self._roots}
        for name, adapter in self._configured.items():
            if name not in self._removed and name not in adapters:
                previous = self._adapters.get(name)
                adapters[name] = previous if previous == adapter else adapter
        gone = [a for n, a in self._adapters.items() if adapters.get(n) != a]
        self._adapters = adapters
        return gone

    def for_base(self, base: str) -> list[Adapter]:
        return [a for a in self._adapters.values() if a.base == base]

    def all(self) -> list[Adapter]:
        return list(self._adapters.values())

    def register(self, base: str, name: str, source: str,
                 reserved_names: Iterable[str] = ()) -> Adapter:
        """Raises CatalogError (StateNotSaved when the change could not be kept)."""
        adapter = self._new(base, name, source, set(reserved_names))
        self._commit({**self._adapters, name: adapter}, self._removed)
        return adapter

    def remove(self, name: str) -> Adapter:
        """Raises CatalogError (StateNotSaved when the change could not be kept)."""
        adapter = self._adapters.get(name)
        if adapter is None:
            raise CatalogError(f"no adapter named {name[:200]!r}", 404, "name")
        removed = self._removed | {name} if name in self._configured else self._removed
        self._commit({n: a for n, a in self._adapters.items() if n != name}, removed)
        return adapter

    def _new(self, base: str, name: str, source: str, reserved: set[str]) -> Adapter:
        if base not in self._roots:
            raise CatalogError(f"model {base[:200]!r} has no LoRA config", 404, "model")
        if name in self._adapters or name in self._reserved or name in reserved:
            raise CatalogError(f"the name {name!r} is already taken", 409, "name")
        return Adapter(name, base, self._check_source(base, source), "runtime",
                       next(self._generations))

    def _commit(self, adapters: dict[str, Adapter], removed: frozenset[str]) -> None:
        """Saved first: a change the state file cannot keep is not made at all."""
        self._save_state(adapters, removed)
        self._adapters, self._removed = adapters, removed

    def _check_source(self, base: str, source: str) -> str:
        """Runtime sources are directories under the model's configured roots: no other
        path, no ``..``, no symlink leading out."""
        roots = self._roots[base]
        if not roots:
            raise CatalogError(f"model {base!r} accepts no runtime adapters: its lora.roots "
                               "is empty", 400, "source")
        if "\0" in source:
            raise CatalogError("source must not contain a NUL byte", 400, "source")
        if ".." in Path(source).parts:
            raise CatalogError("source must not contain '..'", 400, "source")
        shown = repr(source[:200])
        try:
            resolved = _resolve(roots[0], source)
            inside = any(resolved.is_relative_to(root) for root in roots)
            is_dir = inside and resolved.is_dir()
        except (OSError, ValueError) as exc:  # too long, not encodable as a file name, ...
            reason = exc.strerror if isinstance(exc, OSError) else "not a valid file name"
            raise CatalogError(f"source {shown} cannot be used: {reason}", 400,
                               "source") from None
        if not inside:
            raise CatalogError(f"source {shown} is outside the adapter roots of model "
                               f"{base!r}: {', '.join(map(str, roots))}", 400, "source")
        if not is_dir:
            raise CatalogError(f"source {shown} is not a directory", 400, "source")
        return str(resolved)

    # --- persistence ----------------------------------------------------------------

    def reload_state(self) -> list[Adapter]:
        """Another process serving the same adapters (a sibling worker) changed the state
        file: take its registrations and removals. An adapter that stays as it was keeps
        its object (its residency holds). Returns the adapters that left, to retire."""
        before = self._adapters
        self._adapters, self._removed = dict(self._configured), frozenset()
        self._load_state()
        for name, adapter in self._adapters.items():
            old = before.get(name)
            if old is not None and (old.base, old.source, old.origin) == \
                    (adapter.base, adapter.source, adapter.origin):
                self._adapters[name] = old
        return [a for n, a in before.items() if self._adapters.get(n) is not a]

    def _load_state(self) -> None:
        """Runtime changes from the state file, each checked again as if registered now
        (against the current roots and model names). Whatever fails is logged and
        ignored: the gateway starts from the config, never crashes on the file."""
        if self._state_file is None:
            return
        try:
            saved = read_state(self._state_file)
        except StateError as exc:
            log.error("adapter state ignored, starting from the config: %s", exc)
            return
        if saved is None:
            return
        for problem in saved.problems:
            log.error("adapter state %s: %s; ignored", self._state_file, problem)
        for name in saved.removed:
            if self._adapters.pop(name, None) is not None:
                self._removed |= {name}
        for name, (base, source) in saved.registered.items():
            try:
                self._adapters[name] = self._new(base, name, source, set())
            except CatalogError as exc:
                log.error("adapter state %s: registered adapter %r ignored (and dropped "
                          "at the next change): %s", self._state_file, name, exc.message)

    def _save_state(self, adapters: dict[str, Adapter], removed: frozenset[str]) -> None:
        if self._state_file is None:
            return
        registered = {a.name: (a.base, a.source) for a in adapters.values()
                      if a.origin == "runtime"}
        try:
            write_state(self._state_file, registered, removed)
        except OSError as exc:
            raise StateNotSaved(f"the change was NOT made: cannot write the adapter state "
                                f"file {self._state_file}: {exc.strerror or exc}") from None


def _resolve(root: Path, source: str) -> Path:
    candidate = Path(os.path.expanduser(source))
    if not candidate.is_absolute():
        candidate = root / candidate
    return Path(os.path.realpath(candidate))
