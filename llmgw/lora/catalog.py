"""Which adapters exist, for which base model, from where: the config's adapters plus
those registered or removed at runtime through the admin API. Runtime changes are kept
in a state file, so they survive a restart or a config reload.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("llmgw.lora")


class CatalogError(Exception):
    """A runtime change that cannot be made; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    base: str  # the served model name it belongs to
    source: str  # what the engine loads: a directory (or a hub id from the config)
    origin: Literal["config", "runtime"] = "config"


class AdapterCatalog:
    """Adapter name -> Adapter, names unique across all base models."""

    def __init__(self, configured: Iterable[Adapter], roots: dict[str, list[str]],
                 state_file: Path | None = None) -> None:
        self._adapters = {a.name: a for a in configured}
        self._configured = dict(self._adapters)
        # base model -> directories runtime sources must lie under (resolved).
        self._roots = {base: [Path(os.path.realpath(os.path.expanduser(r))) for r in dirs]
                       for base, dirs in roots.items()}
        self._state_file = state_file
        self._removed: set[str] = set()
        self._load_state()

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def for_base(self, base: str) -> list[Adapter]:
        return [a for a in self._adapters.values() if a.base == base]

    def all(self) -> list[Adapter]:
        return list(self._adapters.values())

    def register(self, base: str, name: str, source: str,
                 reserved_names: Iterable[str] = ()) -> Adapter:
        if base not in self._roots:
            raise CatalogError(f"model {base!r} has no LoRA config", 404, "model")
        if name in self._adapters or name in set(reserved_names):
            raise CatalogError(f"the name {name!r} is already taken", 409, "name")
        adapter = Adapter(name, base, self._check_source(base, source), "runtime")
        self._adapters[name] = adapter
        self._removed.discard(name)
        self._save_state()
        return adapter

    def remove(self, name: str) -> Adapter:
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            raise CatalogError(f"no adapter named {name!r}", 404, "name")
        if name in self._configured:
            self._removed.add(name)  # stays removed across restarts despite the config
        self._save_state()
        return adapter

    def _check_source(self, base: str, source: str) -> str:
        """Runtime sources are directories under the model's configured roots: no other
        path, no ``..``, no symlink leading out."""
        roots = self._roots[base]
        if not roots:
            raise CatalogError(f"model {base!r} accepts no runtime adapters: its lora.roots "
                               "is empty", 400, "source")
        if ".." in Path(source).parts:
            raise CatalogError("source must not contain '..'", 400, "source")
        candidate = Path(os.path.expanduser(source))
        if not candidate.is_absolute():
            candidate = roots[0] / candidate
        resolved = Path(os.path.realpath(candidate))
        if not any(resolved.is_relative_to(root) for root in roots):
            raise CatalogError(f"source {source!r} is outside the adapter roots of model "
                               f"{base!r}: {', '.join(map(str, roots))}", 400, "source")
        if not resolved.is_dir():
            raise CatalogError(f"source {source!r} is not a directory", 400, "source")
        return str(resolved)

    # --- persistence ----------------------------------------------------------------

    def _load_state(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError) as exc:
            log.error("cannot read adapter state %s: %s; starting from the config",
                      self._state_file, exc)
            return
        for name in state.get("removed", []):
            if self._adapters.pop(name, None) is not None:
                self._removed.add(name)
        for name, entry in state.get("registered", {}).items():
            base = entry.get("base")
            if base in self._roots and name not in self._adapters:
                self._adapters[name] = Adapter(name, base, entry["source"], "runtime")

    def _save_state(self) -> None:
        if self._state_file is None:
            return
        state = {"registered": {a.name: {"base": a.base, "source": a.source}
                                for a in self._adapters.values() if a.origin == "runtime"},
                 "removed": sorted(self._removed)}
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(self._state_file)  # atomic: a crash leaves the old or the new state
