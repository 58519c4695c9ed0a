"""The adapter state file (``<server.state_dir>/adapters.json``): adapters registered and
removed at runtime, kept across restarts. Written only by the catalog, but read as
untrusted input: a hand edit or another version's format must never stop the gateway.

    {"registered": {"<name>": {"base": "<model>", "source": "<dir>"}, ...},
     "removed": ["<name of a configured adapter>", ...]}
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmgw.state_file import StateError, read_object, replace

__all__ = ["ADAPTER_NAME", "SavedState", "StateError", "read_state", "write_state"]

# The same rule as the config's and the admin API's adapter names.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class SavedState:
    # name -> (base model, source), only entries of the right shape
    registered: dict[str, tuple[str, str]] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    # Entries of the wrong shape, each in words (``registered.x must be an object``).
    problems: list[str] = field(default_factory=list)


def read_state(path: Path) -> SavedState | None:
    """The saved state, None when there is no file. Raises StateError."""
    data = read_object(path)
    return None if data is None else _parse(data)


def _parse(data: dict[str, object]) -> SavedState:
    state = SavedState()
    registered = data.get("registered", {})
    if isinstance(registered, dict):
        for name, entry in registered.items():
            _add_registered(state, name, entry)
    else:
        state.problems.append("registered must be an object")
    removed = data.get("removed", [])
    if isinstance(removed, list):
        for i, name in enumerate(removed):
            if isinstance(name, str):
                state.removed.append(name)
            else:
                state.problems.append(f"removed[{i}] must be a string")
    else:
        state.problems.append("removed must be a list")
    return state


def _add_registered(state: SavedState, name: str, entry: object) -> None:
    if not ADAPTER_NAME.match(name):
        state.problems.append(f"registered[{name!r}]: not a valid adapter name")
    elif not isinstance(entry, dict):
        state.problems.append(f"registered.{name} must be an object")
    elif not all(isinstance(entry.get(k), str) and entry[k] for k in ("base", "source")):
        state.problems.append(f"registered.{name} needs strings 'base' and 'source'")
    else:
        state.registered[name] = (entry["base"], entry["source"])


def write_state(path: Path, registered: Mapping[str, tuple[str, str]],
                removed: Iterable[str]) -> None:
    """Replace the file atomically. Raises OSError; then the old file is untouched."""
    replace(path, {"registered": {name: {"base": base, "source": source}
                                  for name, (base, source) in registered.items()},
                   "removed": sorted(removed)})
